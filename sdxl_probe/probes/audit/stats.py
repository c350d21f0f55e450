"""Streaming dataset statistics for the caption audit.

:class:`AuditAggregator` sees one caption at a time and keeps only counters keyed by token
count, tag text or caption hash, never a token list, so memory does not grow with the number
of captions except for the duplicate-detection hash table (one int per distinct caption).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections import Counter
from typing import Any

from sdxl_probe.probes.audit.caption import CaptionAudit, normalize_caption

POOLED_LIMIT = 75  # the pooled vector comes from the first 75-token chunk only (sd-scripts-compat §1)
MAX_EXAMPLES = 20
N_LONGEST = 10


@dataclasses.dataclass
class ShuffleTally:
    """Running sum of per-occurrence cut probabilities for each tag at one limit."""

    prob_sum: Counter = dataclasses.field(default_factory=Counter)
    occurrences: Counter = dataclasses.field(default_factory=Counter)

    def add(self, tags: list[str], probs: list[float]) -> None:
        for tag, p in zip(tags, probs, strict=True):
            key = tag.lower()
            self.occurrences[key] += 1
            if p:
                self.prob_sum[key] += p


@dataclasses.dataclass
class AuditAggregator:
    """Dataset-level counters filled caption by caption (see module docstring)."""

    limits: tuple[int, ...]
    shuffle_limits: tuple[int, ...]
    n_captions: int = 0
    te_mismatch: int = 0
    sources: Counter = dataclasses.field(default_factory=Counter)
    hist: dict[str, Counter] = dataclasses.field(default_factory=lambda: {"te1": Counter(), "te2": Counter()})
    cut: Counter = dataclasses.field(default_factory=Counter)
    lost: dict[int, Counter] = dataclasses.field(default_factory=dict)
    tag_frequency: dict[str, Counter] = dataclasses.field(default_factory=dict)
    tag_occurrences: Counter = dataclasses.field(default_factory=Counter)
    tag_blind: Counter = dataclasses.field(default_factory=Counter)
    tag_partly_blind: Counter = dataclasses.field(default_factory=Counter)
    styles: Counter = dataclasses.field(default_factory=Counter)
    style_examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    empty_examples: list[str] = dataclasses.field(default_factory=list)
    trigger_positions: Counter = dataclasses.field(default_factory=Counter)
    trigger_missing: int = 0
    kept_end: Counter = dataclasses.field(default_factory=Counter)
    shuffle: dict[int, ShuffleTally] = dataclasses.field(default_factory=dict)
    shuffle_method: Counter = dataclasses.field(default_factory=Counter)
    longest: list[tuple[int, int, str, str]] = dataclasses.field(default_factory=list)
    _seen: dict[int, int] = dataclasses.field(default_factory=dict)
    _dups: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lost = {limit: Counter() for limit in self.limits}
        self.shuffle = {limit: ShuffleTally() for limit in self.shuffle_limits}

    def add(
        self,
        a: CaptionAudit,
        *,
        caption: str,
        where: str,
        subset: str,
        tag_text: str,
        source: str,
        separator: str,
        has_trigger: bool,
    ) -> None:
        """Count one caption (``where``: its file or image path, for examples)."""
        self.n_captions += 1
        self.sources[source] += 1
        for enc, n in a.n_tokens.items():
            self.hist[enc][n] += 1
        self.te_mismatch += len(set(a.n_tokens.values())) > 1
        for limit in self.limits:
            if a.lost[limit]:
                self.cut[limit] += 1
                self.lost[limit].update({t.lower() for t in a.lost[limit]})  # once per caption
        self._add_tags(a, subset, tag_text)
        self._add_style(a.style, caption, where)
        if has_trigger:
            if a.trigger_pos is None:
                self.trigger_missing += 1
            else:
                self.trigger_positions[a.trigger_pos] += 1
        if a.kept_end is not None:
            self.kept_end[a.kept_end] += 1
        self._add_duplicate(caption, where, separator)
        self._add_longest(a.n_tokens["te1"], caption, where)

    def add_shuffle(self, limit: int, tags: list[str], probs: list[float], exact: bool) -> None:
        self.shuffle[limit].add(tags, probs)
        self.shuffle_method["exact" if exact else "monte_carlo"] += 1

    def _add_tags(self, a: CaptionAudit, subset: str, tag_text: str) -> None:
        # ss_tag_frequency: raw caption split on ",", stripped, lowercased, per dir (sd-scripts set_tag_frequency).
        freq = self.tag_frequency.setdefault(subset, Counter())
        freq.update(t.strip().lower() for t in tag_text.split(",") if t.strip())
        for tag, first, last in zip(a.tags, a.tag_first, a.tag_last, strict=True):
            if not tag or first is None:
                continue
            key = tag.lower()
            self.tag_occurrences[key] += 1
            if first > POOLED_LIMIT:
                self.tag_blind[key] += 1
            elif last is not None and last > POOLED_LIMIT:
                self.tag_partly_blind[key] += 1

    def _add_style(self, style: str, caption: str, where: str) -> None:
        self.styles[style] += 1
        examples = self.style_examples.setdefault(style, [])
        if len(examples) < 3 and style != "empty":
            examples.append(caption)
        if style == "empty" and len(self.empty_examples) < MAX_EXAMPLES:
            self.empty_examples.append(where)

    def _add_duplicate(self, caption: str, where: str, separator: str) -> None:
        norm = normalize_caption(caption, separator)
        if not norm:
            return
        key = int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little")
        first = self._seen.setdefault(key, self.n_captions)
        if first == self.n_captions:
            return
        dup = self._dups.setdefault(key, {"caption": norm, "count": 1, "examples": [], "first_row": first})
        dup["count"] += 1
        if len(dup["examples"]) < 5:
            dup["examples"].append(where)

    def _add_longest(self, n: int, caption: str, where: str) -> None:
        item = (n, -self.n_captions, caption, where)
        if len(self.longest) < N_LONGEST:
            heapq.heappush(self.longest, item)
        elif item > self.longest[0]:
            heapq.heapreplace(self.longest, item)

    def duplicates(self) -> list[dict[str, Any]]:
        """Groups of captions equal after normalization, largest first."""
        return sorted(self._dups.values(), key=lambda d: (-d["count"], d["first_row"]))

    def n_unique(self) -> int:
        return len(self._seen)
