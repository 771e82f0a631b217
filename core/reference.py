"""Published numbers kept as data, never mixed with measured rows: seed 000's claimed
degradation per scale (GPT-2 124M, legal and financial)."""

from __future__ import annotations

import pandas as pd

from .data import DATA_DIR


def paper_claims() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "reference" / "seed000_claims.csv")
