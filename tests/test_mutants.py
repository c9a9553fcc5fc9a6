"""vincie-mutation-check's list stays true to the code (docs/testing.md)."""
from pathlib import Path


def test_every_mutant_still_applies():
    """vincie-mutation-check's faults name lines of today's code: each original text occurs exactly once in
    its file (a line changed since would make its mutant 'not_applicable' and guard nothing; docs/testing.md)."""
    from vincie_tools.mutation_check import MUTANTS

    root = Path(__file__).resolve().parents[1]
    stale = [(m.id, (root / m.file).read_text().count(m.original)) for m in MUTANTS
             if (root / m.file).read_text().count(m.original) != 1]
    assert stale == [], f"mutants whose original text is not in their file exactly once: {stale}"
    assert len({m.id for m in MUTANTS}) == len(MUTANTS)


def test_every_mutant_leaves_valid_python():
    """A fault that leaves its file invalid Python (a line cut out of a block, leaving it empty) fails every
    test at import, so it would count as caught while showing nothing about the tests."""
    from vincie_tools.mutation_check import MUTANTS, _compiles

    root = Path(__file__).resolve().parents[1]
    bad = [m.id for m in MUTANTS if m.file.endswith(".py")
           and not _compiles((root / m.file).read_text().replace(m.original, m.faulty), m.file)]
    assert bad == [], f"mutants that leave their file invalid Python: {bad}"
