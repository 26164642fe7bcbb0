"""The listener that the audio underrun metrics imagine: playing each response's audio in real time from its
first packet."""

from __future__ import annotations

import pytest

from omniserve.runtime.metrics import Playback


def test_packets_ahead_of_playback_never_wait():
    play = Playback(start=10.0)
    play.heard(10.0, 0.5)  # half a second of audio at once
    play.heard(10.3, 0.5)  # the next before the first has played
    play.heard(10.9, 1.0)  # 0.1 s before the second ends
    assert play.underrun == 0 and play.continuous and play.received == 2.0


def test_a_late_packet_adds_its_lateness_and_playback_resumes_from_it():
    play = Playback(start=0.0)
    play.heard(0.0, 0.2)
    play.heard(0.5, 0.2)  # the first ran out at 0.2: 0.3 s of silence
    assert play.underrun == pytest.approx(0.3) and not play.continuous
    play.heard(0.6, 0.2)  # the second plays 0.5 to 0.7: on time
    assert play.underrun == pytest.approx(0.3)
    play.heard(1.0, 0.2)  # the third ran out at 0.9: 0.1 s more
    assert play.underrun == pytest.approx(0.4)


def test_a_gap_under_one_packet_is_still_continuous():
    play = Playback(start=0.0)
    play.heard(0.0, 0.1)
    play.heard(0.105, 0.1)
    assert 0 < play.underrun < 0.01 and play.continuous
