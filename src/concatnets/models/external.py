"""Third-party models by name: ``torchvision:densenet121``, ``timm:densenet121``, ...

A ``LIBRARY:NAME`` string names a constructor of torchvision, timm, MONAI or
segmentation_models_pytorch (``smp``). :func:`external_model_spec` turns it into a
:class:`~concatnets.models.ModelSpec`, so the CLI and the bench build it like a model of
this package: the library is imported only then (a missing one is an error naming its
pip package), the channels and classes the CLI knows (``in_channels``, ``num_classes``)
become the library's own argument names, nothing is downloaded (torchvision
``weights=None``, timm ``pretrained=False``, smp ``encoder_weights=None`` unless the
user sets them) and ``memory_efficient=True`` converts the built model with
:func:`concatnets.memory_efficient`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from concatnets.models._registry import ModelSpec

if TYPE_CHECKING:
    from concatnets.convert import ConversionReport

__all__ = [
    "EXTERNAL_FAMILY",
    "LIBRARIES",
    "ExternalLibrary",
    "LibraryMissingError",
    "check_keywords",
    "conversion_report",
    "external_model_spec",
    "is_external_name",
    "library_arguments",
    "library_model_names",
    "library_version",
]

EXTERNAL_FAMILY = "external"


@dataclass(frozen=True)
class ExternalLibrary:
    """How one library names its models and their channel/class arguments.

    Args:
        prefix: The ``LIBRARY`` part of ``LIBRARY:NAME``.
        module: The module holding the constructors.
        pip: The package to install when ``module`` does not import.
        channels: The library's name for the input channels; ``None``: fixed at 3.
        classes: The library's name for the number of outputs.
        no_download: Settings that keep the constructor from fetching weights.
        defaults: Other settings the CLI fills in (MONAI's ``spatial_dims=2``).
        task: ``classification`` or ``segmentation``; ``None``: found by a probe forward.
        passes_extra_keywords: ``None`` where a constructor refuses keywords it does not
            know; else, for constructors taking ``**kwargs``, whether these arguments send
            the extra keywords on to code that checks them. Where it is False they would
            be dropped silently (smp's native encoders), so they are refused here.
    """

    prefix: str
    module: str
    pip: str
    channels: str | None
    classes: str
    no_download: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    passes_extra_keywords: Callable[[dict[str, Any]], bool] | None = None


def _reaches_a_timm_encoder(kwargs: dict[str, Any]) -> bool:
    """smp hands ``**kwargs`` only to its ``tu-`` (timm) encoders, whose constructors check them."""
    return str(kwargs.get("encoder_name", "")).startswith("tu-")


LIBRARIES: dict[str, ExternalLibrary] = {
    library.prefix: library
    for library in (
        ExternalLibrary(
            "torchvision",
            "torchvision.models",
            "torchvision",
            channels=None,
            classes="num_classes",
            no_download={"weights": None},
            task="classification",
        ),
        ExternalLibrary(
            "timm",
            "timm",
            "timm",
            channels="in_chans",
            classes="num_classes",
            no_download={"pretrained": False},
            task="classification",
        ),
        ExternalLibrary(
            "monai",
            "monai.networks.nets",
            "monai",
            channels="in_channels",
            classes="out_channels",
            defaults={"spatial_dims": 2},
        ),
        ExternalLibrary(
            "smp",
            "segmentation_models_pytorch",
            "segmentation-models-pytorch",
            channels="in_channels",
            classes="classes",
            no_download={"encoder_weights": None},
            task="segmentation",
            passes_extra_keywords=_reaches_a_timm_encoder,
        ),
    )
}

_EXAMPLES = {
    "torchvision": "torchvision:densenet121",
    "timm": "timm:densenet121",
    "monai": "monai:BasicUNet",
    "smp": "smp:Unet",
}
# Used where the constructor has no default of its own (MONAI's DenseNet121).
_FALLBACK_CHANNELS = 3
_FALLBACK_CLASSES = 2
_PROBE_SIDE = 64
_SPECS: dict[str, ModelSpec] = {}
_REPORTS: weakref.WeakKeyDictionary[nn.Module, ConversionReport] = weakref.WeakKeyDictionary()


def is_external_name(name: str) -> bool:
    """Whether ``name`` has the ``LIBRARY:NAME`` form (the library need not be known)."""
    return ":" in name


def _split(name: str) -> tuple[ExternalLibrary, str]:
    prefix, _, model = name.partition(":")
    library = LIBRARIES.get(prefix)
    if library is None:
        close = difflib.get_close_matches(prefix, LIBRARIES, n=1)
        hint = f" Did you mean {close[0]}:{model}?" if close else ""
        raise KeyError(
            f"unknown model library {prefix!r} in {name!r}.{hint} "
            f"Use one of {', '.join(f'{p}:NAME' for p in LIBRARIES)}."
        )
    if not model:
        raise KeyError(f"model {name!r} names no model; write e.g. {_EXAMPLES[prefix]}")
    return library, model


class LibraryMissingError(ImportError):
    """The library of a ``LIBRARY:NAME`` model does not import; the message names its package."""


def _import(library: ExternalLibrary) -> Any:
    try:
        return importlib.import_module(library.module)
    except ImportError as error:
        raise LibraryMissingError(
            f"{library.prefix}: models need the {library.pip!r} package, which does not "
            f"import here ({error}); install it with `pip install {library.pip}`"
        ) from error


def _model_names(library: ExternalLibrary, module: Any) -> list[str]:
    if library.prefix == "torchvision":
        return list(module.list_models(module=module))
    if library.prefix == "timm":
        return list(module.list_models())
    return [
        attr
        for attr, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, nn.Module) and not attr.startswith("_")
    ]


def library_version(library: ExternalLibrary) -> str | None:
    """The installed version of ``library`` (``"installed"`` if it has none), or ``None``
    when it is not installed. Nothing is imported: the package is only looked up."""
    top = library.module.split(".")[0]
    try:
        if importlib.util.find_spec(top) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(library.pip)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def library_model_names(prefix: str, *, aliases: bool = False) -> list[str]:
    """The names ``prefix:NAME`` accepts, sorted; imports the library.

    Args:
        prefix: ``torchvision``, ``timm``, ``monai`` or ``smp``.
        aliases: Also the other names of one class (MONAI's ``BasicUnet`` beside
            ``BasicUNet``); without them each class appears under its own name.

    Raises:
        KeyError: Unknown library (with the closest name).
        LibraryMissingError: The library does not import (names the pip package).
    """
    library, _ = _split(f"{prefix}:_")
    module = _import(library)
    names = _model_names(library, module)
    if not aliases and library.prefix not in ("torchvision", "timm"):
        names = [n for n in names if getattr(getattr(module, n), "__name__", n) == n]
    return sorted(set(names), key=str.lower)


def _constructor(library: ExternalLibrary, module: Any, model: str) -> Callable[..., nn.Module]:
    names = _model_names(library, module)
    if model not in names:
        close = difflib.get_close_matches(model, names, n=3)
        hint = (
            f" Did you mean {', '.join(f'{library.prefix}:{c}' for c in close)}?" if close else ""
        )
        raise KeyError(f"{library.prefix} has no model {model!r}.{hint}")
    if library.prefix == "timm":

        def build_timm(**kwargs: Any) -> nn.Module:
            return module.create_model(model, **kwargs)

        return build_timm
    if library.prefix == "torchvision":
        return module.get_model_builder(model)
    return getattr(module, model)


def _own_default(constructor: Callable[..., Any], key: str) -> Any:
    """The constructor's default for ``key``, or ``None`` when it has none."""
    try:
        parameter = inspect.signature(constructor).parameters.get(key)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def library_arguments(
    library: ExternalLibrary,
    constructor: Callable[..., Any],
    settings: dict[str, Any],
    *,
    name: str = "",
) -> dict[str, Any]:
    """The constructor's keyword arguments for the CLI's ``settings``.

    ``in_channels`` and ``num_classes`` become the library's own names; the library's
    defaults and no-download settings fill what the user did not set.

    Args:
        library: The library.
        constructor: The model's constructor (for its own defaults).
        settings: The CLI's builder arguments (``--model-arg`` plus channels and classes).
        name: ``LIBRARY:NAME``, for messages.
    """
    kwargs = {**library.no_download, **library.defaults}
    settings = dict(settings)
    channels = settings.pop("in_channels", None)
    classes = settings.pop("num_classes", None)
    if channels is not None:
        if library.channels is not None:
            kwargs[library.channels] = channels
        elif channels != 3:
            raise ValueError(
                f"{name or library.prefix} takes 3-channel (RGB) images, but the data has "
                f"{channels} channel(s); convert the images to RGB or choose a model "
                "whose input channels can be set (timm:, monai:, smp:)"
            )
    elif library.prefix == "monai" and _own_default(constructor, library.channels or "") is None:
        kwargs[library.channels or "in_channels"] = _FALLBACK_CHANNELS
    if classes is not None:
        kwargs[library.classes] = classes
    elif library.prefix == "monai" and _own_default(constructor, library.classes) is None:
        kwargs[library.classes] = _FALLBACK_CLASSES
    kwargs.update(settings)
    return kwargs


def _named_parameters(constructor: Callable[..., Any]) -> tuple[list[str], bool] | None:
    """The constructor's keyword names and whether it takes ``**kwargs``; None if unknown."""
    try:
        parameters = list(inspect.signature(constructor).parameters.values())
    except (TypeError, ValueError):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in parameters if p.kind in keyword]
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def check_keywords(
    library: ExternalLibrary, constructor: Callable[..., Any], kwargs: dict[str, Any], name: str
) -> None:
    """Refuse keywords a ``**kwargs`` constructor would drop silently (see
    :attr:`ExternalLibrary.passes_extra_keywords`), naming the closest and all valid ones."""
    if library.passes_extra_keywords is None or library.passes_extra_keywords(kwargs):
        return
    known = _named_parameters(constructor)
    if known is None or not known[1]:
        return  # no **kwargs: the call itself refuses an unknown keyword
    valid = known[0]
    extra = [key for key in kwargs if key not in valid]
    if not extra:
        return
    hints = []
    for key in extra:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ValueError(
        f"{name} has no argument {', '.join(hints)}: {library.prefix} takes unknown "
        f"keywords without checking them and may ignore them. Valid: {', '.join(valid)}"
    )


def _probe_task(name: str, build: Callable[..., nn.Module]) -> str:
    """``classification`` for ``(N, C)`` outputs, ``segmentation`` for ``(N, C, H, W)``."""
    how = (
        "register it with concatnets.models.register_model(name, builder, "
        "task='segmentation' or 'classification') and train that name"
    )
    try:
        model = build().eval()
        channels = next(
            m.in_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)
        )
        with torch.no_grad():
            output = model(torch.zeros(1, channels, _PROBE_SIDE, _PROBE_SIDE))
    except Exception as error:
        raise ValueError(f"cannot tell which task {name} solves ({error}); {how}") from error
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return "classification"
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return "segmentation"
    raise ValueError(f"cannot tell which task {name} solves from its output; {how}")


def _builder(
    name: str, library: ExternalLibrary, constructor: Callable[..., nn.Module]
) -> Callable[..., nn.Module]:
    def build(**settings: Any) -> nn.Module:
        memory_efficient = settings.pop("memory_efficient", False)
        if memory_efficient not in (False, True):
            raise ValueError(
                f"{name}: memory_efficient must be True or False, got {memory_efficient!r} "
                "(third-party models are converted by concatnets.memory_efficient)"
            )
        kwargs = library_arguments(library, constructor, settings, name=name)
        check_keywords(library, constructor, kwargs, name)
        try:
            model = constructor(**kwargs)
        except TypeError as error:
            raise ValueError(
                f"{name} does not take these arguments ({error}); check the --model-arg keys "
                "against the library's documentation"
            ) from error
        if memory_efficient:
            from concatnets.convert import memory_efficient as convert

            model, report = convert(model, report=True)
            _REPORTS[model] = report
        return model

    return build


def conversion_report(model: nn.Module) -> ConversionReport | None:
    """The :class:`~concatnets.convert.ConversionReport` of a model built here, or ``None``.

    Only models built with ``memory_efficient=True`` have one.
    """
    return _REPORTS.get(model)


def external_model_spec(name: str) -> ModelSpec:
    """The spec of ``LIBRARY:NAME``; the library is imported on the first call.

    Raises:
        KeyError: Unknown library or model (with the closest names).
        LibraryMissingError: The library does not import (names the pip package).
        ValueError: MONAI models whose task a probe forward cannot tell.
    """
    if name in _SPECS:
        return _SPECS[name]
    library, model = _split(name)
    constructor = _constructor(library, _import(library), model)
    build = _builder(name, library, constructor)
    task = library.task or _probe_task(name, build)
    spec = ModelSpec(
        name,
        build,
        defaults=dict(library.defaults),
        family=EXTERNAL_FAMILY,
        task=task,
        description=f"{library.prefix} {model} ({task})",
    )
    _SPECS[name] = spec
    return spec
