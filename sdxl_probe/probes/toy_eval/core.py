"""``toy evaluate``: how well a model has learned the toy world, scored from pixels by the judge.

A fixed, seeded prompt set (:func:`build_prompt_set`) in four groups:

- ``single``: one object, colour-shape pairs seen in pretraining, tags and sentence styles;
- ``heldout``: one object, pairs of :data:`~sdxl_probe.toy.world.HELDOUT_COMBOS` (no bar);
- ``two``: two objects of distinct colours;
- ``empty``: the empty prompt, scored against the targets of single-object prompts, which
  gives chance-level figures when the text is what drives the image.

Plus the attention check (:func:`attention_iou`, in :mod:`sdxl_probe.probes.toy_eval.attention`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sdxl_probe.io import write_json
from sdxl_probe.pipeline.device import precision_of
from sdxl_probe.toy.world import BACKGROUNDS, COLOURS, HELDOUT_COMBOS, SHAPES, Scene, ToyObject, caption_scene

# Acceptance bars of issue #3 (figure name -> minimum).
BARS = {"single_colour": 0.90, "single_shape": 0.70, "two_both_colours": 0.75, "attention_iou": 0.40}
SHUFFLED_MAX = 0.15
GROUP_SHARES = {"single": 0.44, "heldout": 0.10, "two": 0.28, "empty": 0.18}


@dataclass
class EvalPrompt:
    """One prompt and what the image should hold (``targets``: (colour, shape) per object)."""

    group: str
    prompt: str
    targets: list[tuple[str, str]]


def _scene(combos: list[tuple[str, str]], background: str) -> Scene:
    positions = ["left", "right"] if len(combos) == 2 else ["centre"]
    return Scene([ToyObject(s, c, "large", p) for (c, s), p in zip(combos, positions, strict=True)], background)


def _backgrounds_for(colours: list[str], rng: random.Random) -> str:
    return rng.choice([b for b in sorted(BACKGROUNDS) if all(BACKGROUNDS[b] != COLOURS[c] for c in colours)])


def _one_object(group: str, combos: list[tuple[str, str]], n: int, rng: random.Random) -> list[EvalPrompt]:
    """``n`` prompts cycling over ``combos`` and the tags/sentence styles."""
    out = []
    for i in range(n):
        colour, shape = combos[i % len(combos)]
        style = ("tags", "sentence")[(i // len(combos)) % 2]
        scene = _scene([(colour, shape)], _backgrounds_for([colour], rng))
        out.append(EvalPrompt(group, caption_scene(scene, style, rng), [(colour, shape)]))
    return out


def _two_objects(n: int, rng: random.Random, seen: list[tuple[str, str]]) -> list[EvalPrompt]:
    out = []
    for i in range(n):
        a = rng.choice(seen)
        b = rng.choice([cs for cs in seen if cs[0] != a[0]])
        scene = _scene([a, b], _backgrounds_for([a[0], b[0]], rng))
        out.append(EvalPrompt("two", caption_scene(scene, ("tags", "sentence")[i % 2], rng), [a, b]))
    return out


def build_prompt_set(n_prompts: int = 212, seed: int = 0) -> list[EvalPrompt]:
    """The fixed prompt set: ``n_prompts`` split over the groups by :data:`GROUP_SHARES`.

    ``empty`` prompts carry the targets of randomly chosen seen single-object prompts.
    """
    rng = random.Random(f"toy-eval-{seed}")
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS]
    rng.shuffle(seen)
    heldout = sorted(HELDOUT_COMBOS)
    counts = {g: max(1, round(share * n_prompts)) for g, share in GROUP_SHARES.items()}
    counts["single"] += n_prompts - sum(counts.values())
    prompts = _one_object("single", seen, counts["single"], rng)
    prompts += _one_object("heldout", heldout, counts["heldout"], rng)
    prompts += _two_objects(counts["two"], rng, seen)
    prompts += [EvalPrompt("empty", "", [rng.choice(seen)]) for _ in range(counts["empty"])]
    return prompts


def score(prompt: EvalPrompt, judgement) -> dict[str, bool]:
    """Per-image correctness against the first target.

    ``colour`` and ``shape`` judge the largest object found (the one the prompt asks for in a
    one-object prompt; chance is 1/7 and 1/4 for an image unrelated to the prompt).
    ``match_any``: some object has the target colour AND shape. ``all_colours``: every
    target colour is present.
    """
    colour, shape = prompt.targets[0]
    main = judgement.objects[0] if judgement.objects else None
    return {
        "colour": main is not None and main.colour == colour,
        "shape": main is not None and main.shape == shape,
        "match_any": bool(judgement.find(colour, shape)),
        "all_colours": all(c in judgement.colours() for c, _ in prompt.targets),
    }


def summarize(prompts: list[EvalPrompt], scores: list[dict[str, bool]]) -> dict[str, float]:
    """Mean figures per group (the acceptance list)."""

    def mean(group: str, key: str) -> float:
        vals = [s[key] for p, s in zip(prompts, scores, strict=True) if p.group == group]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "single_colour": mean("single", "colour"),
        "single_shape": mean("single", "shape"),
        "single_colour_and_shape": mean("single", "match_any"),
        "heldout_colour": mean("heldout", "colour"),
        "heldout_shape": mean("heldout", "shape"),
        "heldout_colour_and_shape": mean("heldout", "match_any"),
        "two_both_colours": mean("two", "all_colours"),
        "empty_colour": mean("empty", "colour"),
        "empty_shape": mean("empty", "shape"),
        "chance_colour": 1.0 / len(COLOURS),
        "chance_shape": 1.0 / len(SHAPES),
    }


@dataclass
class ToyEvaluation:
    """Result of ``toy evaluate`` (toy model figures; see :data:`BARS`)."""

    model: str
    is_toy: bool
    settings: dict
    figures: dict[str, float]
    attention: dict[str, float]
    counts: dict[str, int]
    per_image: list[dict] = field(default_factory=list)
    precision: dict = field(default_factory=dict)  # device, dtype, vae_dtype (absent in older results)

    def save(self, folder: Path) -> Path:
        return write_json(Path(folder) / "evaluate.json", asdict(self))

    @classmethod
    def load(cls, folder: Path) -> ToyEvaluation:
        import json

        return cls(**json.loads((Path(folder) / "evaluate.json").read_text(encoding="utf-8")))

    def acceptance(self) -> list[tuple[str, float, str]]:
        """(figure, value, verdict) lines of the acceptance list."""
        f, a = self.figures, self.attention
        rows = [(k, f[k], "PASS" if f[k] >= bar else f"below {bar}") for k, bar in BARS.items() if k in f]
        rows.append(("single_colour_and_shape", f["single_colour_and_shape"], "no bar"))
        rows += [(k, f[k], "no bar") for k in ("heldout_colour", "heldout_shape", "heldout_colour_and_shape")]
        rows += [("empty_colour", f["empty_colour"], f"chance {f['chance_colour']:.2f}"),
                 ("empty_shape", f["empty_shape"], f"chance {f['chance_shape']:.2f}")]
        if a:
            iou = "PASS" if a["iou"] >= BARS["attention_iou"] else f"below {BARS['attention_iou']}"
            shuf = "PASS" if a["iou_shuffled"] <= SHUFFLED_MAX else f"above {SHUFFLED_MAX}"
            rows += [("attention_iou", a["iou"], iou), ("attention_iou_shuffled", a["iou_shuffled"], shuf)]
        return rows


def evaluate_model(components, *, n_prompts: int = 212, seed: int = 0, steps: int = 20, cfg: float = 5.0,
                   n_attention: int = 64, log=print):
    """Generate the prompt set, judge every image, run the attention check.

    Returns:
        (ToyEvaluation, images (N, H, W, 3) uint8, prompts).
    """
    from sdxl_probe.pipeline.sampling import generate_images
    from sdxl_probe.probes.toy_eval.attention import attention_iou
    from sdxl_probe.toy.judge import judge_image

    prompts = build_prompt_set(n_prompts, seed)
    log(f"generating {len(prompts)} images ({steps} Euler steps, cfg {cfg})")
    images = generate_images(components, [p.prompt for p in prompts], seed=seed, steps=steps, cfg=cfg)
    judgements = [judge_image(im, colours=list(COLOURS), shapes=SHAPES) for im in images]
    scores = [score(p, j) for p, j in zip(prompts, judgements, strict=True)]
    log(f"attention check on {n_attention} training images")
    attention = attention_iou(components, n_images=n_attention, seed=seed) if n_attention else {}
    per_image = [{"group": p.group, "prompt": p.prompt, "targets": p.targets, **s,
                  "judged": [(o.colour, o.shape) for o in j.objects]}
                 for p, s, j in zip(prompts, scores, judgements, strict=True)]
    counts = {g: sum(p.group == g for p in prompts) for g in GROUP_SHARES}
    result = ToyEvaluation(model=str(components.source), is_toy=components.is_toy,
                           settings={"n_prompts": len(prompts), "seed": seed, "steps": steps, "cfg": cfg,
                                     "sampler": "euler", "n_attention": n_attention},
                           figures=summarize(prompts, scores), attention=attention, counts=counts,
                           per_image=per_image, precision=precision_of(components))
    return result, images, prompts
