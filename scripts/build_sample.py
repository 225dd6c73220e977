"""Rebuild bifrost/sample/ from the developer data set (../shared/data/market).

Each CSV becomes a zstd-compressed Parquet file with the same columns; numbers become float64,
timestamps stay the source's text so the one parser in bifrost.data reads CSV and sample alike.
Run from the repository root: python scripts/build_sample.py PATH_TO/shared/data/market
"""
import sys
from pathlib import Path

import pandas as pd

SKIP = {"EUROSTOXX50-like_5min_backtrader_2006-01.csv"}  # no symbol, no exchange calendar: not shippable as a feed

SHIPPED_NOTE = """> **As shipped in Bifrost**: each CSV below is stored as a zstd-compressed Parquet file of the same name
> and columns (numbers as float64, timestamps as the source's text), built by `scripts/build_sample.py`.
> `intraday/EUROSTOXX50-like_5min_backtrader_2006-01.csv` is not shipped: its source names no symbol and no
> exchange calendar, so no feed could say what it is. `bifrost.data.sources.SAMPLE` declares each file's
> ticker, bar size, vendor and price basis (raw or split-adjusted).
"""

def main(src: Path, dst: Path = Path("bifrost/sample")) -> None:
    for sub in ("daily", "intraday", "corporate_actions"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / sub).glob("*.csv")):
            if f.name in SKIP:
                continue
            df = pd.read_csv(f, dtype=str)
            for c in df.columns:
                if c not in ("date", "datetime", "ticker", "exchange"):
                    df[c] = df[c].astype("float64")
            df.to_parquet(dst / sub / f.with_suffix(".parquet").name, compression="zstd", index=False)
    title, rest = (src / "README.md").read_text().split("\n", 1)
    (dst / "README.md").write_text(f"{title}\n\n{SHIPPED_NOTE}\n{rest}")

if __name__ == "__main__":
    main(Path(sys.argv[1]))
