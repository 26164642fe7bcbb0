from omniserve.executors.text_stream import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.push(p) for p in pieces) + stream.flush()


def test_plain_text_passes_through():
    assert feed(TextStream(), [b"Hel", b"lo", b" world"]) == "Hello world"


def test_stop_split_across_tokens_is_cut_and_not_leaked():
    s = TextStream(["STOP here"])
    out = [s.push(p) for p in [b"abc ST", b"OP he", b"re and more"]]
    assert "".join(out) == "abc "
    assert s.stopped
    assert s.flush() == ""


def test_partial_stop_prefix_is_released_when_it_does_not_complete():
    s = TextStream(["</end>"])
    assert s.push(b"a </e") == "a "
    assert s.push(b"xtra") == "</extra"
    assert s.flush() == ""


def test_held_prefix_released_at_end():
    s = TextStream(["###"])
    assert s.push(b"text ##") == "text "
    assert s.flush() == "##"


def test_utf8_split_across_tokens():
    data = "héllo 😀".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert feed(TextStream(), pieces) == "héllo 😀"


def test_earliest_of_several_stops_wins():
    s = TextStream(["world", "lo w"])
    assert s.push(b"hello world") == "hel"
