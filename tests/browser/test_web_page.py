"""The web page in real headless Chromium (Debian's /usr/bin/chromium; never a downloaded browser)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, image_bytes
from tests.http_support import (
    LiveServer,
    RecordingEngine,
    ServeProcess,
    catalogue_sample,
    make_app,
)

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
SAMPLES = REPO / "src" / "vqaserve" / "server" / "static" / "samples"
XSS = '<img src=x onerror="window.__pwned = 1"><script>window.__pwned = 2</script>'


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    _, question, answer = catalogue_sample("test", "color", "en", index=3)
    engine = RecordingEngine(model_id="scripted", adapter_names=["sunglasses"],
                             rules={question: answer, "什么颜色": "红色", "show html": XSS})
    with LiveServer(make_app(engine)) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: `make services` (scripts/install-test-services.sh) "
                    "installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shop_toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`vqa serve` with no --model: the default, the bundled shop-toy (one start for the module)."""
    with ServeProcess(tmp_path_factory.mktemp("shop-toy") / "serve.log") as server:
        yield server


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    # bypass_csp: lets Playwright evaluate its probes; it also proves the page itself renders answers
    # as text, without leaning on the Content-Security-Policy header (tested in test_http_api.py).
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    outside: list[str] = []  # the page must load nothing from anywhere but its own server
    page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:"))
            else outside.append(r.url))
    page.goto(server.url + "/")
    yield page
    assert dialogs == [] and errors == [] and outside == []
    context.close()


def ask(page: Any, picture: Path, question: str) -> str:
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#preview:not([hidden])", state="attached")
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_function("document.querySelector('#stats').textContent.includes('latency')")
    return str(page.text_content("#answer"))


def test_upload_ask_and_see_the_answer_stream_in(page: Any, tmp_path: Path) -> None:
    data, question, answer = catalogue_sample("test", "color", "en", index=3)
    picture = tmp_path / "catalogue.png"
    picture.write_bytes(data)
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == [
        "scripted", "sunglasses"]
    assert ask(page, picture, question) == answer
    stats = page.text_content("#stats")
    assert "latency" in stats and "cached" in stats
    assert ask(page, picture, "这是什么颜色？") == "红色"
    page.screenshot(path=str(tmp_path / "web_page.png"), full_page=True)
    assert (tmp_path / "web_page.png").stat().st_size > 1000


def test_adapter_picker_changes_the_model_used(page: Any, tmp_path: Path) -> None:
    picture = tmp_path / "sunglasses.png"
    picture.write_bytes(image_bytes())
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    page.select_option("#model", "sunglasses")
    assert ask(page, picture, "What is this product?").startswith("[sunglasses]")


def test_html_in_an_answer_is_shown_as_literal_text(page: Any, tmp_path: Path) -> None:
    picture = tmp_path / "x.png"
    picture.write_bytes(image_bytes())
    assert ask(page, picture, "show html please") == XSS
    assert page.eval_on_selector_all("#answer *", "els => els.length") == 0  # no element was created
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=str(tmp_path / "literal_html.png"))


def test_server_errors_are_shown_to_the_user(page: Any, tmp_path: Path) -> None:
    picture = tmp_path / "bad.png"
    picture.write_bytes(b"not an image at all")
    page.set_input_files("#file", str(picture))  # a .png name with garbage inside: the server refuses
    page.wait_for_selector("#preview:not([hidden])", state="attached")
    page.fill("#question", "What color is it?")
    page.click("#ask")
    page.wait_for_function("document.querySelector('#error').textContent.length > 0")
    assert "could not decode image" in page.text_content("#error")
    assert page.text_content("#answer") == ""


def test_a_typed_api_key_is_sent_with_every_api_call(page: Any, tmp_path: Path) -> None:
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    page.fill("#api-key", "sk-test-123")
    page.dispatch_event("#api-key", "change")  # reloads the model list with the key
    picture = tmp_path / "k.png"
    picture.write_bytes(image_bytes())
    ask(page, picture, "What color is it?")
    api = [auth for url, auth in sent if "/v1/" in url]
    assert len(api) >= 2 and all(auth == "Bearer sk-test-123" for auth in api)


@pytest.mark.slow
def test_the_bundled_model_answers_a_catalogue_picture_on_the_page(browser: Any, shop_toy: ServeProcess,
                                                                  tmp_path: Path) -> None:
    # Issue 3's "done when" question. (shop-toy reads colour at ~85%; category only two times in
    # three, docs/eval.md, so a category question here would test luck more than the page.)
    data, question, answer = catalogue_sample("test", "color", "en", index=0)
    picture = tmp_path / "catalogue.png"
    picture.write_bytes(data)
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    page.goto(shop_toy.url + "/")
    page.set_default_timeout(120_000)  # CPU generation on a busy machine
    assert ask(page, picture, question).strip().lower() == answer
    page.screenshot(path=str(tmp_path / "shop_toy_page.png"), full_page=True)
    context.close()


def test_another_model_gets_no_demo_line_and_no_samples(page: Any) -> None:
    # The scripted engine stands for any model that is not the bundled demo (the HTTP side of a real
    # model of the user's own: tests/integration/test_web_page_info.py).
    with page.expect_response(lambda r: r.url.endswith("/static/page.json")) as info:
        page.reload()
    assert info.value.ok  # the page asked; what it was told is checked by test_web_page_info.py
    page.wait_for_load_state("networkidle")  # app.js has handled the answer
    assert page.is_hidden("#demo-note") and page.is_hidden("#samples")
    assert page.eval_on_selector_all("#samples button", "els => els.length") == 0


@pytest.mark.slow
def test_the_bundled_model_says_what_it_knows_and_offers_samples(browser: Any, shop_toy: ServeProcess,
                                                                 tmp_path: Path) -> None:
    samples = json.loads((SAMPLES / "samples.json").read_text())
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(120_000)  # CPU generation on a busy machine
    page.goto(shop_toy.url + "/")
    page.wait_for_selector("#demo-note", state="visible")
    note = page.inner_text("#demo-note")  # as rendered: source line breaks collapsed
    assert "only the synthetic shop catalogue" in note and "--model" in note
    assert page.eval_on_selector_all("#samples img", "els => els.map(e => e.alt)") == [
        s["alt"] for s in samples]
    page.wait_for_function(  # every thumbnail really loaded (not a broken-image icon)
        "[...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth > 0)")
    # shop-toy names this handbag on every seed tried (scripts/make_page_samples.py picked seeds).
    handbag = next(s for s in samples if s["category"] == "handbag")
    page.click(f"#samples img[alt='{handbag['alt']}']")
    page.wait_for_selector("#preview:not([hidden])", state="attached")
    preview = page.get_attribute("#preview", "src")
    assert preview.startswith("data:image/png;base64,")  # loaded as a dropped file is
    assert base64.b64decode(preview.split(",", 1)[1]) == (SAMPLES / handbag["file"]).read_bytes()
    page.click("button.example:text-is('What is this product?')")
    page.click("#ask")
    page.wait_for_function("document.querySelector('#stats').textContent.includes('latency')")
    assert page.text_content("#answer").strip() == "handbag"
    page.screenshot(path=str(tmp_path / "demo_page.png"), full_page=True)
    assert errors == []
    context.close()


# Builds a File from base64 in the page and delivers it the way a drop or a paste does.
_DELIVER = """([b64, how]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], "photo.png", { type: "image/png" }));
  if (how === "drop") {
    document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
  } else {
    document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true }));
  }
}"""


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_a_photo_can_be_dropped_or_pasted(page: Any, how: str) -> None:
    import base64

    data, question, answer = catalogue_sample("test", "color", "en", index=3)
    page.evaluate(_DELIVER, [base64.b64encode(data).decode(), how])
    page.wait_for_selector("#preview:not([hidden])", state="attached")
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_function("document.querySelector('#stats').textContent.includes('latency')")
    assert page.text_content("#answer") == answer
