"""What the article cleaner costs: prints milliseconds per article, and seconds per crafted input.

    .venv/bin/python -m benchmarks.clean [--repeat 5] [--size 500000] [--old-timeout 20]

Three measures, each in one run so the ratios hold on a shared machine:

- the corpus (tests/fixtures/feeds/corpus, 24 real-world-shaped feed items)
  and the seed article through `articles.normalise`, which now cleans, against
  the same items through nh3 alone (`sanitise_html` + `html_to_text`, what
  normalise did before): median ms per item and the ratio;
- each crafted input of `tests.helpers.crafted` at `--size` characters (the
  store's limit by default) through `normalise`: seconds and characters/s;
- the same crafted inputs through nh3 alone (the old path), each in a child
  process killed after `--old-timeout` seconds, since some never finish.

Needs no database or broker.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mailer.content.feeds import parse
from mailer.content.incoming import RawArticle, html_to_text, normalise, sanitise_html
from tests.helpers.crafted import hostile_inputs
from tests.helpers.seed import SEED_TITLE, seed_html

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "feeds" / "corpus"
NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)
URL = "https://news.example.org/story"


def corpus() -> list[RawArticle]:
    items = [RawArticle(url=URL, title=SEED_TITLE, content_html=seed_html())]
    for path in sorted(CORPUS.glob("*.xml")):
        items += parse(path.read_bytes(), f"https://feeds.example/{path.name}").entries
    return items


def cleaned(raw: RawArticle) -> None:
    normalise(raw, base_url=URL, now=NOW)


def nh3_only(raw: RawArticle) -> None:
    """What normalise did with an article's HTML before the cleaner."""
    sanitise_html(raw.content_html, URL)
    html_to_text(raw.summary_html) or html_to_text(raw.content_html)


def per_item_ms(items: list[RawArticle], work: Callable[[RawArticle], None], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for raw in items:
            work(raw)
        runs.append((time.perf_counter() - started) / len(items) * 1000)
    return statistics.median(runs)


def _old_path(value: str, done: mp.Queue[float]) -> None:
    started = time.perf_counter()
    nh3_only(RawArticle(url=URL, title="T", summary_html=value, content_html=value))
    done.put(time.perf_counter() - started)


def old_path_seconds(value: str, timeout: float) -> str:
    done: mp.Queue[float] = mp.Queue()
    child = mp.Process(target=_old_path, args=(value, done))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return f"> {timeout:g} s (killed)"
    return f"{done.get():.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=500_000)
    parser.add_argument("--old-timeout", type=float, default=20.0)
    args = parser.parse_args()

    items = corpus()
    with_cleaner = per_item_ms(items, cleaned, args.repeat)
    before = per_item_ms(items, nh3_only, args.repeat)
    print(
        f"corpus + seed, {len(items)} items: {with_cleaner:.2f} ms/item through normalise "
        f"(cleaner + nh3), {before:.2f} ms/item nh3 alone: ratio {with_cleaner / before:.1f}"
    )
    print(f"crafted inputs of {args.size:,} characters: normalise | nh3 alone (the old path)")
    for name, value in hostile_inputs(args.size).items():
        raw = RawArticle(url=URL, title="T", summary_html=value, content_html=value)
        started = time.perf_counter()
        cleaned(raw)
        took = time.perf_counter() - started
        old = old_path_seconds(value, args.old_timeout)
        print(f"  {name:32} {took:7.3f} s {len(value) / took:>13,.0f} chars/s | {old}")


if __name__ == "__main__":
    main()
