"""Whether what the node says it saw on a film is there: its statements about lines and devices.

The report and the SR list the objects an analysis left out (``anatomy.devices``). Two of them are
statements a radiologist reads as findings: "line, tube or wire" and "metal device". Each is judged
against the objects drawn in the zone file:

* "line, tube or wire" is right when a wire or a tube is drawn;
* "metal device" is right when a device is drawn.

Jewellery (a necklace: a wire to the eye, metal too) makes neither statement wrong, nor missed. Lead
markers, text and electrodes are on nearly every film and are not judged. Films without drawn zones
(a labels CSV) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from miemss_node.pipeline.objects import LINE, METAL

if TYPE_CHECKING:
    from miemss_node.evaluate.real import FilmResult

#: Per statement, the drawn objects that make it right.
DRAWN_FOR = {LINE: ("wire", "tube"), METAL: ("device",)}
#: Drawn objects that make any statement right, and none missed.
AMBIGUOUS = ("jewellery",)


def device_statements(results: Sequence[FilmResult]) -> dict[str, dict[str, int]]:
    """Per statement: films where it was said and drawn, said but not drawn, drawn but not said. Films
    whose ``drawn_objects`` is None (no zones) are left out."""
    counts = {statement: {"said_and_drawn": 0, "said_not_drawn": 0, "drawn_not_said": 0} for statement in DRAWN_FOR}
    for result in results:
        if result.drawn_objects is None:
            continue
        drawn = set(result.drawn_objects)
        if drawn & set(AMBIGUOUS):
            continue
        for statement, objects in DRAWN_FOR.items():
            said, there = statement in result.devices, bool(drawn & set(objects))
            if said and there:
                counts[statement]["said_and_drawn"] += 1
            elif said:
                counts[statement]["said_not_drawn"] += 1
            elif there:
                counts[statement]["drawn_not_said"] += 1
    return counts
