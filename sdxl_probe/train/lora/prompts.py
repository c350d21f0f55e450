"""sd-scripts sample prompt files: one prompt per line, options after `` --`` (docs/sd-scripts-compat.md §6).

``--n`` negative prompt, ``--w``/``--h`` size, ``--d`` seed, ``--s`` steps, ``--l`` guidance scale;
``#`` lines are comments. Defaults as sd-scripts: 30 steps, guidance 7.5; the size defaults to
the model's native size (sd-scripts: 512) and the seed to the line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdxl_probe.errors import ConfigError


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    seed: int = 0
    steps: int = 30
    guidance: float = 7.5


OPTIONS = {"n": ("negative", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
           "s": ("steps", int), "l": ("guidance", float)}  # fmt: skip


def parse_prompt_line(line: str, index: int, where: str = "prompt file") -> SamplePrompt:
    """One line ``a cat --n blurry --w 64 --d 3`` -> :class:`SamplePrompt` (seed defaults to ``index``)."""
    parts = line.split(" --")
    values: dict = {"prompt": parts[0].strip(), "seed": index}
    for part in parts[1:]:
        key, _, value = part.strip().partition(" ")
        if key not in OPTIONS:
            if key in ("ss", "cn", "am", "f"):  # sd-scripts sampler/controlnet/etc.: not modelled
                continue
            raise ConfigError(f"{where}: unknown option --{key} in {line!r}; use --n --w --h --d --s --l")
        name, kind = OPTIONS[key]
        try:
            values[name] = kind(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: --{key} {value.strip()!r} is not a {kind.__name__} in {line!r}") from None
    return SamplePrompt(**values)


def read_prompt_file(path: str | Path) -> list[SamplePrompt]:
    """Every prompt of a ``.txt`` prompt file (blank and ``#`` lines skipped)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the prompt file ({e}); give a UTF-8 .txt file") from None
    lines = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    return [parse_prompt_line(s, i, str(p)) for i, s in enumerate(lines)]
