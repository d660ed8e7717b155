"""The web page in real headless Chromium (Debian's chromium driven by Playwright; no browser download).

Draw a digit on the canvas with the mouse, get the answer, send feedback, see it in the recent table and in
Cassandra. The page must load nothing from outside the gateway. Set MNIST_UPDATE_SCREENSHOT=1 to refresh
docs/screenshot.png from this test.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.fixtures.cassandra_node import qualified

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"

# A "7" in one stroke (canvas fractions): the top bar, then the diagonal down. One stroke means one automatic
# read of the drawing, however slowly a loaded machine replays the mouse moves.
SEVEN = [[(0.22, 0.2), (0.78, 0.2), (0.45, 0.85)]]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def watch(page, base_url: str) -> dict[str, list[str]]:
    """Collect page errors, console errors, and any request that leaves the gateway (those are aborted)."""
    seen: dict[str, list[str]] = {"errors": [], "outside": []}
    host = urlparse(base_url).netloc
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and seen["errors"].append(msg.text))

    def route(r):
        url = urlparse(r.request.url)
        if url.scheme in ("data", "blob") or url.netloc == host:
            r.continue_()
        else:
            seen["outside"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return seen


def mnist_test_digit(mnist_dir: Path, index: int) -> tuple[np.ndarray, int]:
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[index], int(labels[index])


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def draw(page, strokes) -> None:
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
        page.mouse.up()


def test_draw_a_digit_get_the_answer_and_send_feedback(
    browser, gateway_server, clean_tables, cassandra_session, tmp_path
):
    page = browser.new_page(viewport={"width": 1120, "height": 1180})
    seen = watch(page, gateway_server.url)
    page.goto(gateway_server.url + "/")
    assert page.title() == "MNIST digit reader"

    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as predicted:
        draw(page, SEVEN)  # the page reads the drawing by itself when the pen stays up
    answer = predicted.value.json()
    assert predicted.value.status == 200
    expect(page.locator("#digit")).not_to_have_text("?")

    # What the page shows is what the API answered (whether a quickly trained test model reads this 7 right
    # is the preprocessing tests' business, measured on thousands of images).
    digit = answer["digit"]
    assert page.locator("#digit").inner_text() == str(digit)
    assert page.locator("#bars li").count() == 10
    assert page.locator("#bars li.best").inner_text().startswith(str(digit))
    assert max(answer["probabilities"]) == answer["probabilities"][digit]
    # The bars are drawn to scale (after their short animation).
    widths = "[...document.querySelectorAll('#bars li')].map(li => li.querySelector('.fill')"
    widths += ".getBoundingClientRect().width / li.querySelector('.track').getBoundingClientRect().width)"
    for _ in range(40):
        drawn = page.evaluate(widths)
        if abs(drawn[digit] - answer["probabilities"][digit]) < 0.02:
            break
        page.wait_for_timeout(100)
    assert drawn == pytest.approx([max(p, 0.005) for p in answer["probabilities"]], abs=0.02)
    assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")
    assert f"v{answer['model']['version']}" in page.locator("#model-version").inner_text()

    # The recent table lists it (read back from Cassandra), then feedback marks it.
    row = page.locator(f'#recent-body tr[data-id="{answer["id"]}"]')
    row.wait_for()
    assert row.locator("td.digit-cell").inner_text() == str(digit)
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as sent:
        page.get_by_role("button", name="The right digit is 7").click()
    assert sent.value.status == 200
    expect(page.locator("#fb-status")).to_have_text(re.compile(r"^Thanks!"))
    tag = page.locator(f'#recent-body tr[data-id="{answer["id"]}"] .tag')
    tag.wait_for()
    assert tag.inner_text() == ("✓ correct" if digit == 7 else "✗ was 7")

    row_in_db = cassandra_session.execute(
        "SELECT label, digit FROM " + qualified(clean_tables, "feedback_by_id") + " WHERE id = %s",
        [uuid.UUID(answer["id"])],
    ).one()
    assert (row_in_db.label, row_in_db.digit) == (7, digit)

    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("MNIST_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
    assert seen == {"errors": [], "outside": []}
    page.close()


def test_upload_by_file_picker_and_errors_are_shown(browser, gateway_server, mnist_dir, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    seen = watch(page, gateway_server.url)
    page.goto(gateway_server.url + "/")
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as rejected:
        page.set_input_files("#file", str(not_an_image))
    assert rejected.value.status == 415
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    assert page.locator("#result").is_hidden()

    # A photo-like upload of an MNIST test digit (dark ink on a large light canvas) through the picker.
    image, _ = mnist_test_digit(mnist_dir, index=0)
    upload = tmp_path / "scan of a digit.png"
    Image.fromarray(255 - image).resize((300, 300), Image.Resampling.BICUBIC).save(upload)
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as predicted:
        page.set_input_files("#file", str(upload))
    assert predicted.value.status == 200
    expect(page.locator("#digit")).to_have_text(str(predicted.value.json()["digit"]))
    assert page.locator("#status").inner_text() == ""
    # A failed upload takes the previous answer away: feedback would otherwise label the wrong picture.
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as rejected:
        page.set_input_files("#file", str(not_an_image))
    assert rejected.value.status == 415
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#result")).to_be_hidden()
    page.locator("#clear-btn").click()
    page.locator("#predict-btn").click()
    assert page.locator("#status").inner_text() == "Draw a digit first."
    # Chromium may log the 415 with the server's reason phrase (its case is the server's choice).
    assert seen["outside"] == []
    refused = "failed to load resource: the server responded with a status of 415 (unsupported media type)"
    assert {e.lower() for e in seen["errors"]} <= {refused}
    page.close()


def test_the_page_fits_a_phone_screen(browser, gateway_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(gateway_server.url + "/")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    pad = page.locator("#pad").bounding_box()
    assert 250 <= pad["width"] <= 390
    # Every button has an accessible name; images have alt text.
    names = page.eval_on_selector_all(
        "button", "bs => bs.map(b => b.getAttribute('aria-label') || b.textContent.trim())"
    )
    assert all(names)
    assert page.eval_on_selector_all("img", "imgs => imgs.every(i => i.alt)")
    # The feedback digits are buttons a finger can hit (WCAG's comfortable target: 44 px).
    page.evaluate("document.getElementById('result').hidden = false")
    widths = page.eval_on_selector_all(
        "#fb-digits button", "bs => bs.map(b => b.getBoundingClientRect().width)"
    )
    assert len(widths) == 10 and min(widths) >= 44, widths
    context.close()


SENT_AT_MOST = 300 * 1024  # what the page may send for a 12 MP photo (it shrinks it to 1000 px)
# Records the image each multipart request of the page carries (Playwright cannot see a File's bytes).
RECORD_SENT = """
window.sentImages = [];
const originalFetch = window.fetch;
window.fetch = (url, options) => {
  const image = options && options.body instanceof FormData ? options.body.get("image") : null;
  if (image) window.sentImages.push({ size: image.size, type: image.type, name: image.name });
  return originalFetch(url, options);
};
"""


def drop_file(page, data: bytes, name: str, content_type: str, target: str = "#drop") -> None:
    """Drop a file on the drop zone (or another element), as dragging it from the desktop does."""
    transfer = page.evaluate_handle(
        """([b64, name, type]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            return transfer;
        }""",
        [base64.b64encode(data).decode(), name, content_type],
    )
    page.dispatch_event(target, "drop", {"dataTransfer": transfer})


@pytest.mark.parametrize(
    ("photo_name", "how"),
    [
        ("phone_exif_6", "picker"),
        ("phone_upright", "drop"),
        ("phone_exif_8", "drop"),
        ("png_scan", "picker"),
        # A file without an extension has no type in the browser: the page still recognises a JPEG.
        ("phone_exif_6", "drop-untyped"),
    ],
)
def test_a_phone_photo_is_shrunk_by_the_page_and_read_right(
    browser, gateway_server, phone_photos, tmp_path, photo_name, how
):
    photo = phone_photos[photo_name]
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.add_init_script(RECORD_SENT)
    seen = watch(page, gateway_server.url)
    page.goto(gateway_server.url + "/")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as answered:
        if how == "picker":
            path = tmp_path / photo.filename
            path.write_bytes(photo.data)
            page.set_input_files("#file", str(path))
        elif how == "drop":
            drop_file(page, photo.data, photo.filename, photo.content_type)
        else:
            drop_file(page, photo.data, "IMG_0001", "")
    [sent] = page.evaluate("window.sentImages")
    assert sent["size"] < SENT_AT_MOST < len(photo.data), f"sent {sent} for {len(photo.data)} bytes"
    assert sent["type"] == "image/jpeg"
    assert sent["name"] == ("IMG_0001" if how == "drop-untyped" else photo.filename)
    assert answered.value.status == 200
    assert answered.value.json()["digit"] == photo.digit
    expect(page.locator("#digit")).to_have_text(str(photo.digit))
    assert seen == {"errors": [], "outside": []}
    page.close()


def test_a_small_picture_is_sent_as_it_is(browser, gateway_server, mnist_dir, tmp_path):
    image, _ = mnist_test_digit(mnist_dir, index=0)
    upload = tmp_path / "small.png"
    Image.fromarray(255 - image).resize((300, 300), Image.Resampling.BICUBIC).save(upload)
    page = browser.new_page()
    page.add_init_script(RECORD_SENT)
    page.goto(gateway_server.url + "/")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as answered:
        drop_file(page, upload.read_bytes(), upload.name, "image/png")
    assert answered.value.status == 200
    sent = page.evaluate("window.sentImages")
    assert sent == [{"size": len(upload.read_bytes()), "type": "image/png", "name": "small.png"}]
    page.close()


BLANK_PIXELS = """(() => {
  const pad = document.getElementById("pad");
  const data = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
  const lit = [];
  for (let i = 0; i < data.length; i += 4) if (data[i] > 128) lit.push((i / 4) % pad.width);
  return lit;
})()"""


def test_one_drawing_is_read_once_however_often_it_is_asked(browser, gateway_server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.add_init_script(RECORD_SENT)
    page.clock.install()  # the page reads a drawing by itself only when the test says, however slow the VM
    page.goto(gateway_server.url + "/")
    draw(page, SEVEN)
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as answered:
        page.locator("#predict-btn").dblclick()  # before the page reads it by itself
    assert answered.value.status == 200
    page.clock.run_for(1000)  # the page's own read of the same drawing is due: it must not read it again
    page.locator("#clear-btn").click()
    draw(page, SEVEN)
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")):
        page.clock.run_for(1000)  # a new drawing is read again
    # Two drawings, two reads (a second read of the first drawing would come before the second drawing's).
    assert len(page.evaluate("window.sentImages")) == 2
    page.close()


def test_only_the_first_pointer_draws_and_only_with_the_main_button(browser, gateway_server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(gateway_server.url + "/")
    box = page.locator("#pad").bounding_box()
    page.mouse.click(box["x"] + 60, box["y"] + 60, button="right")  # "Save image as..."
    assert page.evaluate(BLANK_PIXELS) == []
    page.close()

    # Two fingers on a phone (a pinch): the first finger draws its own stroke, the second draws nothing and
    # no line joins them.
    context = browser.new_context(viewport={"width": 375, "height": 740}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(gateway_server.url + "/")
    box = page.locator("#pad").bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = context.new_cdp_session(page)

    def touch(kind: str, spread: float) -> None:
        fingers = [
            {"x": centre_x - spread, "y": centre_y, "id": 1},
            {"x": centre_x + spread, "y": centre_y, "id": 2},
        ]
        cdp.send(
            "Input.dispatchTouchEvent", {"type": kind, "touchPoints": [] if kind == "touchEnd" else fingers}
        )

    touch("touchStart", 20)
    for spread in range(25, 100, 5):
        touch("touchMove", spread)
    touch("touchEnd", 0)
    columns = page.evaluate(BLANK_PIXELS)
    pad_width = page.evaluate("document.getElementById('pad').width")
    assert columns and max(columns) < pad_width / 2  # the first finger's stroke only, left of the centre
    context.close()


def test_load_more_pages_to_the_end_without_repeating_a_row(browser, gateway_server, clean_tables, mnist_dir):
    image, _ = mnist_test_digit(mnist_dir, index=0)
    upload = png_bytes(image)
    for i in range(25):
        response = requests.post(
            gateway_server.url + "/v1/predict",
            files={"image": (f"seed-{i}.png", upload, "image/png")},
            timeout=30,
        )
        assert response.status_code == 200
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(gateway_server.url + "/")
    rows = page.locator("#recent-body tr")
    expect(rows).to_have_count(10)
    more = page.locator("#more-btn")
    with page.expect_response(lambda r: "cursor=" in r.url):
        more.dblclick()
    while True:
        expect(more).to_be_enabled()
        if more.is_hidden():
            break
        with page.expect_response(lambda r: "cursor=" in r.url):
            more.click()
    expect(rows).to_have_count(25)
    ids = page.eval_on_selector_all("#recent-body tr", "trs => trs.map(tr => tr.dataset.id)")
    assert len(set(ids)) == 25
    page.close()


def test_a_picture_the_browser_reads_but_the_gateway_does_not_is_converted(
    browser, gateway_server, mnist_dir
):
    image, _ = mnist_test_digit(mnist_dir, index=0)
    buffer = io.BytesIO()
    Image.fromarray(255 - image).resize((200, 200), Image.Resampling.BICUBIC).save(buffer, format="AVIF")
    page = browser.new_page()
    page.add_init_script(RECORD_SENT)
    page.goto(gateway_server.url + "/")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as answered:
        drop_file(page, buffer.getvalue(), "seven.avif", "image/avif")
    assert answered.value.status == 200
    [sent] = page.evaluate("window.sentImages")
    assert sent["type"] in ("image/png", "image/jpeg") and sent["name"] == "seven.avif"
    page.close()


def test_a_pasted_picture_is_read(browser, gateway_server, mnist_dir):
    image, _ = mnist_test_digit(mnist_dir, index=0)
    page = browser.new_page()
    page.goto(gateway_server.url + "/")
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "image.png", { type: "image/png" }));
            return transfer;
        }""",
        base64.b64encode(png_bytes(255 - image)).decode(),
    )
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as answered:
        page.evaluate(
            "(t) => document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: t }))", transfer
        )
    assert answered.value.status == 200
    expect(page.locator("#digit")).to_have_text(str(answered.value.json()["digit"]))
    page.close()


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        # The server's message already says when to come back: the page does not say it twice.
        ("busy", "The model server is busy; try again shortly."),
        (
            "unreachable",
            "The picture could not be sent (no connection to the gateway, or the file cannot be read).",
        ),
    ],
)
def test_failures_are_told_in_plain_words(browser, gateway_server, mnist_dir, failure, shown):
    page = browser.new_page()

    def fail(route):
        if failure == "unreachable":
            route.abort("connectionrefused")
        else:
            body = {
                "error": {
                    "code": "model_unavailable",
                    "message": "The model server is busy; try again shortly.",
                }
            }
            route.fulfill(status=503, headers={"Retry-After": "5"}, json=body)

    page.route("**/v1/predict*", fail)
    page.goto(gateway_server.url + "/")
    image, _ = mnist_test_digit(mnist_dir, index=0)
    drop_file(page, png_bytes(image), "seven.png", "image/png")
    expect(page.locator("#status")).to_have_text(shown)
    page.close()


def test_the_hidden_file_input_is_no_tab_stop(browser, gateway_server):
    page = browser.new_page()
    page.goto(gateway_server.url + "/")
    page.locator("#drop").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") != "file"
    page.close()


def test_a_picture_dropped_anywhere_on_the_page_is_read(browser, gateway_server, mnist_dir):
    """Not only on the drop zone: a browser opens a file dropped elsewhere in place of the page."""
    image, _ = mnist_test_digit(mnist_dir, index=0)
    page = browser.new_page()
    page.goto(gateway_server.url + "/")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")) as answered:
        drop_file(page, png_bytes(image), "seven.png", "image/png", target="#pad")
    assert answered.value.status == 200
    assert page.url == gateway_server.url + "/"
    page.close()


def test_focus_stays_in_the_feedback_after_sending_it(browser, gateway_server, mnist_dir):
    """Sending feedback disables its buttons; keyboard users keep their place (the thanks line)."""
    image, _ = mnist_test_digit(mnist_dir, index=0)
    page = browser.new_page()
    page.goto(gateway_server.url + "/")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")):
        drop_file(page, png_bytes(image), "seven.png", "image/png")
    page.locator("#fb-yes").focus()
    with page.expect_response(lambda r: r.url.endswith("/feedback")):
        page.keyboard.press("Enter")
    expect(page.locator("#fb-status")).to_have_text(re.compile(r"^Thanks!"))
    assert page.evaluate("document.activeElement.id") == "fb-status"
    page.close()


def test_feedback_answered_after_the_next_upload_failed_is_kept_quietly(browser, gateway_server, mnist_dir):
    """Feedback in flight when the next upload fails (the answer it was for is gone from the page): its
    answer still refreshes the recent list, and no error about the vanished answer is shown."""
    image, _ = mnist_test_digit(mnist_dir, index=0)
    page = browser.new_page()
    page.goto(gateway_server.url + "/")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict?input=png")):
        drop_file(page, png_bytes(image), "seven.png", "image/png")
    held = []
    page.route("**/feedback", lambda route: held.append(route))
    page.locator("#fb-yes").click()
    page.wait_for_function("document.querySelector('#fb-yes').disabled")
    for _ in range(600):  # the request reaches the route handler on Playwright's side of the connection
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the feedback request never left the page"
    page.route(
        "**/v1/predict*",
        lambda route: route.fulfill(status=503, json={"error": {"code": "x", "message": "down"}}),
    )
    drop_file(page, png_bytes(image), "seven.png", "image/png")
    expect(page.locator("#status")).to_have_text("down")
    with page.expect_request(lambda r: "/v1/predictions?" in r.url):
        held[0].continue_()
    expect(page.locator("#fb-status")).not_to_contain_text("Cannot read")
    page.close()


def test_the_recent_list_leaves_out_shadow_copies(browser, gateway_server):
    """A shadow copy is another version's answer to an upload the user saw answered once: one row each."""

    def item(number: int, routing: str, request_id: str | None = None) -> dict:
        return {
            "id": f"00000000-0000-4000-8000-00000000000{number}",
            "created_at": "2026-12-01T00:00:00.000Z",
            "filename": f"upload-{number}.png",
            "digit": 3,
            "probabilities": [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "model": {"name": "mnist", "version": 1 if routing != "shadow" else 2, "routing": routing},
            "request_id": request_id,
            "timings_ms": {"preprocess": 1.0, "model": 1.0, "total": 2.0},
            "feedback": None,
        }

    user = item(1, "stable")
    page_body = {"items": [item(2, "shadow", user["id"]), user, item(3, "canary")], "next_cursor": None}
    page = browser.new_page()
    page.route("**/v1/predictions?*", lambda route: route.fulfill(json=page_body))
    page.goto(gateway_server.url + "/")
    expect(page.locator("#recent-body tr")).to_have_count(2)
    shown = page.locator("#recent-body tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert shown == [user["id"], page_body["items"][2]["id"]]
    page.close()
