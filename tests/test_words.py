"""Counted words in messages."""
from napari_lgms._words import counted, plural


def test_counted_words_agree_with_their_count():
    assert counted(1, "image") == "1 image"
    assert counted(0, "image") == "0 images"
    assert counted(3, "held-out correction") == "3 held-out corrections"
    assert plural(1, "is", "are") == "is" and plural(2, "is", "are") == "are"
