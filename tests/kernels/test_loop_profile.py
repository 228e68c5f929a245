"""The static loop profile's choice of the hot loop (`kernels.triton.loop_profile`), on synthetic SASS."""

from __future__ import annotations

from kernels.triton import loop_profile


def _sass(loops: list[tuple[int, int]]) -> str:
    """SASS with one loop per ``(instructions, matrix instructions)``, back to back; each ends in its branch back."""
    lines, address = [], 0
    for count, matrix in loops:
        start = address
        for i in range(count - 1):
            op = "HGMMA.64x128x16.F32 gdesc[UR4], RZ, !UPT" if i < matrix else "FADD R1, R2, R3"
            lines.append(f"        /*{address:04x}*/                   {op} ;")
            address += 16
        lines.append(f"        /*{address:04x}*/                   @P0 BRA 0x{start:x} ;")
        address += 16
    return "\n".join(lines)


def test_the_hot_loop_is_the_smallest_whole_iteration():
    """A loop with fewer matrix instructions than an iteration's (a partial loop the compiler emits) is never the
    hot loop, however small; among the loops with the most, the smallest is (the unmasked one)."""
    sass = _sass([(621, 4), (1207, 20), (984, 20), (1569, 20)])
    assert loop_profile.matmul_loops(sass) == [(621, 4), (1207, 20), (984, 20), (1569, 20)]
    instructions, per_mflop = loop_profile.warp_instructions_per_mflop(sass, "fwd", 64, 64, 128, 8)
    assert instructions == 984
    assert per_mflop == 984 * 8 / (4 * 64 * 64 * 128 / 1e6)


def test_no_matrix_loop_gives_no_figure():
    assert loop_profile.warp_instructions_per_mflop(_sass([]), "fwd", 64, 64, 128, 8) == (None, None)
