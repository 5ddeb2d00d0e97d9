"""The HTTP corpus of tests/e2e/http_corpus (issue 12) against anycore-gateway behind the
stand-in node: prints each case answered differently from what the corpus asks, case by
case (tests/e2e/test_http_corpus.py is the test, on real nodes; this is the quick look while
changing native/src/parse.rs or h1.rs). Run: PYTHONPATH=src python native/corpus_probe.py"""
import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from native_fake import FakeNode
from tests.e2e.test_http_corpus import CORPUS, load, exchange, responses
n = FakeNode(threads=1); port = n.listen(); n.service(); n.add_worker(1, slots=4)
n.stats("app", lambda s: len(s.inflight) == 1)
bad = 0
for path in sorted(CORPUS.glob("*/*.http")):
    statuses, body, fin, raw = load(path)
    try:
        got = responses(exchange(port, raw, fin, len(statuses), timeout=3))
    except AssertionError as e:
        got = str(e)[:80]
    ok = isinstance(got, list) and [s for s, _ in got] == statuses and (body is None or got[0][1] == body)
    if not ok:
        bad += 1
        print(f"{path.parent.name}/{path.name}: expected {statuses} {body!r}, got {got if not isinstance(got, list) else [(s, b[:40]) for s, b in got]}")
print("mismatches", bad, "of", len(list(CORPUS.glob("*/*.http"))), "alive", n.proc.poll() is None)
n.close()
