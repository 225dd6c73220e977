"""Sentiment on hand examples, negation, and the measured accuracy on Financial PhraseBank (evaluation only: the
set is CC BY-NC-SA and not shipped, so these tests read it from the developer data folder and skip without it);
event tags against the shipped hand-labelled sample."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bifrost.signals.text import (SentimentError, evaluate_events, evaluate_labels, event_labels, finbert_scores,
                                  phrasebank, sentiment_labels, sentiment_scores, tag_events)

DEV = Path(os.environ.get("BIFROST_NEWS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "news"))
needs_phrasebank = pytest.mark.skipif(not (DEV / "financial_phrasebank_v1.0_sentences.csv").exists(),
                                      reason="Financial PhraseBank (CC BY-NC-SA, not shipped) not in the developer set")

HAND = [  # (text, label) written for these tests
    ("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn", "positive"),
    ("Net sales decreased by 5 % in the quarter", "negative"),
    ("The company's net loss narrowed to EUR 0.3 mn", "positive"),
    ("Costs increased sharply in the quarter", "negative"),
    ("Revenue did not fall despite the weak market", "positive"),
    ("The analyst downgraded the shares to sell", "negative"),
    ("The company is headquartered in Helsinki", "neutral"),
    ("The board will meet on Tuesday", "neutral"),
    ("Shares plunged after a profit warning", "negative"),
    ("Profit was not good this year", "negative"),
]


@pytest.mark.parametrize("text,label", HAND)
def test_hand_examples(text, label):
    assert sentiment_labels(sentiment_scores([text]))[0] == label


def test_negation_flips_the_sign():
    s = sentiment_scores(["Sales declined", "Sales never declined", "Results were good", "Results were not good"])
    assert s[0] < 0 < s[1] and s[2] > 0 > s[3]


def test_cost_reversal_reaches_four_words():
    "Known limit: a direction word more than four words after the cost noun keeps its own sign."
    near, far = sentiment_scores(["Costs increased", "Costs increased sharply due to higher energy prices"])
    assert near < 0 < far


def test_scores_are_bounded_and_deterministic():
    texts = [t for t, _ in HAND] * 3
    a, b = sentiment_scores(texts), sentiment_scores(texts)
    assert np.array_equal(a, b) and (np.abs(a) <= 1).all() and a.dtype == np.float64


@needs_phrasebank
def test_phrasebank_measured_accuracy():
    "The finance adjustment beats plain VADER on both tiers (figures reported in nbs/09b0_signals.text.ipynb)."
    for tier, floor in (("AllAgree", 0.69), ("50Agree", 0.60)):
        pb = phrasebank(DEV, tier)
        plain = evaluate_labels(pb.label, sentiment_labels(sentiment_scores(pb.sentence, finance=False)))
        fin = evaluate_labels(pb.label, sentiment_labels(sentiment_scores(pb.sentence)))
        assert fin.accuracy.iloc[0] >= floor > plain.accuracy.iloc[0]
        assert fin.recall["negative"] > plain.recall["negative"]


def test_phrasebank_missing_is_a_clear_error(tmp_path):
    with pytest.raises(SentimentError, match="not found"):
        phrasebank(tmp_path)


def test_finbert_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(SentimentError, match="FinBERT|transformers"):
        finbert_scores(["x"], tmp_path)


def test_event_tags_on_the_hand_labelled_sample():
    lab = event_labels()
    ev = evaluate_events(lab.text, lab.events)
    assert len(lab) == 101 and ev.labelled.sum() == 45
    assert (ev.precision >= 0.6).all() and (ev.recall >= 0.8).all()
    assert tag_events("Apple Releases #iOS9.0.2 With Bug Fixes") == ()
