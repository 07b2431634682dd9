"""What a conversion did: one line per site found, converted or not, and why."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConversionReport", "Site"]


@dataclass(frozen=True)
class Site:
    """One place in the model where a concatenation or a norm -> act -> conv chain was found.

    Attributes:
        path: The module's qualified name in the model (``""`` for the model itself).
        kind: ``"dense block"`` or ``"chain"`` (a traced module's cat/norm/act/conv chains).
        converted: Whether the site now runs on the engine.
        detail: What was converted, or why the site was left as it was.
    """

    path: str
    kind: str
    converted: bool
    detail: str


@dataclass
class ConversionReport:
    """The sites :func:`concatnets.memory_efficient` found in one model."""

    sites: list[Site] = field(default_factory=list)

    @property
    def converted(self) -> list[Site]:
        return [site for site in self.sites if site.converted]

    @property
    def unconverted(self) -> list[Site]:
        return [site for site in self.sites if not site.converted]

    def add(self, path: str, kind: str, converted: bool, detail: str) -> None:
        self.sites.append(Site(path or "<model>", kind, converted, detail))

    def __str__(self) -> str:
        lines = [f"{len(self.converted)} site(s) converted, {len(self.unconverted)} left as is"]
        for site in self.sites:
            mark = "converted" if site.converted else "left as is"
            lines.append(f"  [{mark}] {site.kind} {site.path}: {site.detail}")
        return "\n".join(lines)
