"""The package imports and exposes exactly its curated public names."""

import clientlb


def test_all_matches_public_names() -> None:
    import types

    public = {n for n in dir(clientlb) if not n.startswith("_")
              and not isinstance(getattr(clientlb, n), types.ModuleType)} - {"annotations"}
    assert set(clientlb.__all__) - {"__version__"} == public
    assert clientlb.__all__ == sorted(clientlb.__all__, key=lambda s: (s.upper() != s, s))
