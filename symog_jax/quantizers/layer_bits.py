"""Per-layer bit-width tables: ``"conv1=8,fc1=4"`` inline, a JSON file, or a mapping.

One parser for the weights' ``bits_per_layer`` and the activations' ``act_bits_per_layer``;
each caller says how its keys are normalised and which bit range it allows.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any, Callable, Mapping


def parse_layer_bits(spec: Any, what: str, min_bits: int, max_bits: int, *,
                     normalize_key: Callable[[str], str] = lambda k: k,
                     allow_mapping: bool = False) -> dict[str, int]:
    """``{layer path: bits}`` from an inline spec, a JSON file's path (or a mapping).

    Keys lose surrounding ``/`` and then go through ``normalize_key``; order is kept.

    Raises:
      ValueError (one line, starting with ``what``): not a string (or mapping), an empty spec,
        a missing or unreadable file, JSON that is not an object, a malformed or repeated
        entry, bits outside ``[min_bits, max_bits]``.

    Example:
      >>> parse_layer_bits("conv1=8, fc1=4", "bits", 2, 8)
      {'conv1': 8, 'fc1': 4}
      >>> parse_layer_bits("conv1=9", "bits", 2, 8)
      Traceback (most recent call last):
      ...
      ValueError: bits: 'conv1' has 9 bits; each must be an integer in [2, 8]
    """
    items: list[tuple[Any, Any]]
    if allow_mapping and isinstance(spec, Mapping):
        items = list(spec.items())
    elif not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{what} must be 'layer=bits,...' or a JSON file's path, got {spec!r}")
    elif "=" in spec and not Path(spec.strip()).is_file():
        items = []
        for part in spec.split(","):
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"{what}: {part.strip()!r} is not 'layer=bits'")
            try:
                items.append((key.strip(), int(value.strip())))
            except ValueError:
                raise ValueError(f"{what}: {part.strip()!r} is not 'layer=bits' with integer "
                                 "bits") from None
    else:
        path = Path(spec.strip())
        if not path.is_file():
            raise ValueError(f"{what}: file {spec.strip()!r} does not exist (inline: "
                             "'layer=bits,...')")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{what}: cannot read {path} as JSON: "
                             f"{str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{what}: {path} must hold a JSON object {{layer path: bits}}")
        items = list(data.items())
    table: dict[str, int] = {}
    for key, bits in items:
        name = normalize_key(key.strip().strip("/")) if isinstance(key, str) else ""
        if not name:
            raise ValueError(f"{what}: {key!r} is not a layer path")
        if name in table:
            raise ValueError(f"{what}: {name!r} is given twice")
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) \
                or not min_bits <= bits <= max_bits:
            raise ValueError(f"{what}: {name!r} has {bits!r} bits; each must be an integer in "
                             f"[{min_bits}, {max_bits}]")
        table[name] = int(bits)
    if not table:
        raise ValueError(f"{what}: {spec!r} gives no layer")
    return table


def format_layer_bits(table: Mapping[str, int]) -> str:
    """The canonical inline form of ``{path: bits}``: ``'conv2=4,fc1=8'``.

    Example:
      >>> format_layer_bits({"conv2": 4, "fc1": 8})
      'conv2=4,fc1=8'
    """
    return ",".join(f"{k}={int(b)}" for k, b in table.items())
