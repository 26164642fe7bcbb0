"""The web playground in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (scripts/test.sh installs both). The server asks for an API key, which the page takes; a chat
message gets an answer, an uploaded photo is described, and the voice mode hears a spoken question from
Chromium's fake microphone (a LibriVox sentence) and answers aloud, over WebRTC and over the WebSocket.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.audio_helpers import librivox_clips, normalize
from tests.conftest import ROOT, run_server, shared_models
from tests.media_helpers import skimage_photo

KEY = "sk-playground-test"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The default models, an image model (sketch-rnn, real Magenta weights from ../shared/models), a key."""
    sketches = shared_models() / "sketch-rnn-quickdraw"
    with run_server("--image-model", f"sketch-rnn:{sketches}", tmp_path=tmp_path_factory.mktemp("playground"),
                    api_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def spoken_question(tmp_path_factory):
    """What the fake microphone says: silence, "he was not an ill disposed young man", silence."""
    audio, rate = sf.read(librivox_clips()[1][0], dtype="int16")
    path = tmp_path_factory.mktemp("microphone") / "question.wav"
    sf.write(path, np.concatenate([np.zeros(rate, np.int16), audio, np.zeros(rate * 6, np.int16)]), rate,
             subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(spoken_question):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "install Debian's chromium and chromium-driver (scripts/test.sh does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={spoken_question}%noloop",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.set_script_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    yield browser
    browser.quit()


def wait(browser, predicate, timeout: float = 120):
    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda b: predicate(b))


def shot(browser, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"playground-{name}.png"))


def open_page(browser, server) -> None:
    browser.get(server.base_url + "/")
    key = browser.find_element(By.ID, "key")
    key.clear()
    key.send_keys(KEY + "\n")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait(browser, lambda b: "smollm2-135m" in b.find_element(By.ID, "models").text, 30)


def last_answer(browser, log: str = "messages"):
    answers = browser.find_elements(By.CSS_SELECTOR, f"#{log} .message.assistant[data-done]")
    errors = browser.find_elements(By.CSS_SELECTOR, f"#{log} .message.error")
    assert not errors, errors[-1].text
    return answers[-1] if answers else None


def test_the_page_is_served_and_asks_for_the_key(server, browser):
    assert httpx.get(server.base_url + "/playground").status_code == 200  # the page needs no key
    assert httpx.get(server.base_url + "/v1/models").status_code == 401  # the API does
    browser.get(server.base_url + "/playground")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    wait(browser, lambda b: "API key" in b.find_element(By.ID, "status").text, 30)
    open_page(browser, server)
    models = browser.find_element(By.ID, "models").text
    assert "whisper-tiny.en" in models and "imagenet-ocr" in models and browser.find_element(By.ID, "status").text == ""
    shot(browser, "models")


def test_a_chat_message_gets_an_answer(server, browser):
    open_page(browser, server)
    browser.find_element(By.ID, "prompt").send_keys("Hello! What is a cat?\n")
    answer = wait(browser, lambda b: last_answer(b))
    assert answer.text.strip() and answer.text != "…"
    assert "What is a cat?" in browser.find_element(By.CSS_SELECTOR, "#messages .message.user").text
    shot(browser, "chat")


def test_an_uploaded_image_is_described(server, browser):
    open_page(browser, server)
    upload = browser.find_element(By.ID, "image")
    browser.execute_script("arguments[0].style.display = 'block'", upload)
    upload.send_keys(str(skimage_photo("chelsea.png")))
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#attachments img"), 10)
    temperature = browser.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")  # greedy, as the vision tests ask: the answer names what the vision stage saw
    browser.find_element(By.ID, "prompt").send_keys("What animal is this?\n")
    answer = wait(browser, lambda b: last_answer(b))
    assert "cat" in answer.text.lower(), answer.text
    assert browser.find_elements(By.CSS_SELECTOR, "#messages .message.user img")
    shot(browser, "image")


def talk(browser, transport: str) -> None:
    """Start the voice mode: the fake microphone asks its question; the answer is heard over `transport`."""
    browser.find_element(By.CSS_SELECTOR, "[data-tab=voice]").click()
    browser.find_element(By.ID, "voice-toggle").click()
    wait(browser, lambda b: b.find_element(By.ID, "voice-log").get_attribute("data-transport"), 30)
    assert browser.find_element(By.ID, "voice-log").get_attribute("data-transport") == transport
    heard = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#voice-log .message.user"))
    assert "young man" in normalize(heard[0].text), heard[0].text
    answer = wait(browser, lambda b: last_answer(b, "voice-log"))
    assert answer.text.strip() and answer.get_attribute("data-done") in ("completed", "incomplete")
    # the answer's audio reached the page's player (over WebRTC: it played from the server's track)
    seconds = wait(browser, lambda b: float(b.find_element(By.ID, "voice-log").get_attribute("data-audio-seconds")
                                            or 0), 60)
    assert seconds > 0.5
    shot(browser, f"voice-{transport}")
    browser.find_element(By.ID, "voice-toggle").click()
    wait(browser, lambda b: b.find_element(By.ID, "voice-state").text == "off", 10)


def test_the_voice_mode_hears_a_question_and_answers_aloud_over_webrtc(server, browser):
    open_page(browser, server)
    talk(browser, "webrtc")


def test_the_voice_mode_falls_back_to_the_websocket(server, browser):
    open_page(browser, server)
    browser.execute_script("window.RTCPeerConnection = undefined")  # a browser without WebRTC
    talk(browser, "websocket")


def test_images_and_videos_are_made_on_the_page(server, browser):
    open_page(browser, server)
    browser.find_element(By.CSS_SELECTOR, "[data-tab=images]").click()
    browser.find_element(By.ID, "image-prompt").send_keys("a cat\n")
    drawn = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#image-out img"))
    wait(browser, lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", drawn[0]))
    assert browser.execute_script("return arguments[0].naturalWidth", drawn[0]) == 256
    shot(browser, "images")
    browser.find_element(By.CSS_SELECTOR, "[data-tab=videos]").click()  # sketch-rnn animates its strokes
    browser.find_element(By.ID, "video-prompt").send_keys("a bicycle\n")
    video = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#video-out video"))
    duration = wait(browser, lambda b: b.execute_script(
        "return arguments[0].readyState >= 1 && arguments[0].duration", video[0]))
    assert duration > 0.5, duration
    shot(browser, "videos")


def test_the_playground_can_be_turned_off(tmp_path):
    with run_server("--disable-playground", "--asr-model", "none", "--tts-model", "none", "--vision-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path, api_key=KEY) as bare:
        for path in ("/", "/playground", "/playground/static/app.js"):
            assert httpx.get(bare.base_url + path).status_code == 401  # no open page: the key guards every path
        with bare.http() as http:
            assert http.get("/playground").status_code == 404 and http.get("/v1/models").status_code == 200
