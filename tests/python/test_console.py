"""The web console (/console) in a real browser: Debian's chromium driven by Playwright.

Run by tests/api/console.rs (`browser_drives_the_console`), which starts keygate in front of
its mock upstream and passes KEYGATE_URL, KEYGATE_ADMIN_KEY (the bootstrap admin key),
KEYGATE_MEMBER_PASSWORD (of members ada = admin, max and mia = member), KEYGATE_CHROMIUM
and KEYGATE_SHOTS (where screenshots go, at 1280 and 360 px wide).

The tests run in file order and share one browser: sign in with the admin key, create a
key and read its secret once, see it listed, chart its usage, delete it; then members.
"""

import json
import os
import pathlib
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

URL = os.environ.get("KEYGATE_URL", "")
ADMIN_KEY = os.environ.get("KEYGATE_ADMIN_KEY", "")
PASSWORD = os.environ.get("KEYGATE_MEMBER_PASSWORD", "")
CHROMIUM = os.environ.get("KEYGATE_CHROMIUM", "/usr/bin/chromium")
SHOTS = pathlib.Path(os.environ.get("KEYGATE_SHOTS", "target/console-shots"))

shared = {}


def setup_module(module):
    assert URL and ADMIN_KEY and PASSWORD, "run through `cargo test --test api console::`"
    SHOTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


problems = []


def new_page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=URL)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=URL)
    page = context.new_page()
    # A CSP violation or a script error anywhere fails the run (checked at the end).
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page


def shoot(page, name):
    """Screenshots at 1280 and 360 px; at 360 the page must not scroll sideways."""
    page.screenshot(path=str(SHOTS / f"{name}-1280.png"), full_page=True)
    page.set_viewport_size({"width": 360, "height": 740})
    overflow = page.evaluate("document.documentElement.scrollWidth")
    wide = page.eval_on_selector_all(
        "body *",
        "els => els.filter(e => e.getBoundingClientRect().right > 361 && !e.closest('.table-wrap'))"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)",
    )
    page.screenshot(path=str(SHOTS / f"{name}-360.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})
    assert overflow <= 360, f"{name} is {overflow} px wide at 360 px: {wide}"


def every_field_labelled(page):
    unlabelled = page.eval_on_selector_all(
        "input:not([type=hidden]), select, textarea",
        "els => els.filter(e => !e.labels || e.labels.length === 0).map(e => e.outerHTML)",
    )
    assert unlabelled == [], unlabelled


def api(method, path, key, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def chat(key):
    return api("POST", "/v1/chat/completions", key,
               {"model": "mock-model", "messages": [{"role": "user", "content": "hello there"}]})


def row(page, name):
    return page.locator("#keys tbody tr", has=page.get_by_role("link", name=name, exact=True))


def test_sign_in_with_an_admin_key(browser):
    page = new_page(browser)
    page.goto("/console")
    expect(page).to_have_url(URL + "/console/sign-in")
    every_field_labelled(page)
    shoot(page, "sign-in")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in with key").click()
    expect(page).to_have_url(URL + "/console/keys")
    expect(page.get_by_role("heading", name="Keys", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Members")).to_be_visible()
    shared["admin"] = page


def test_create_a_key_and_read_its_secret_once(browser):
    page = shared["admin"]
    page.get_by_role("link", name="New key").click()
    dialog = page.locator("#create-dialog")
    expect(dialog).to_be_visible()
    every_field_labelled(page)
    expect(dialog.get_by_label("Kind")).to_be_visible()  # admins may make admin keys
    shoot(page, "create-dialog")
    dialog.get_by_label("Name").fill("browser key")
    dialog.get_by_role("button", name="Create key").click()

    secret_dialog = page.locator("#secret-dialog")
    expect(secret_dialog).to_be_visible()
    secret = secret_dialog.get_by_label("Secret").input_value()
    assert secret.startswith("kg_"), secret
    secret_dialog.get_by_role("button", name="Copy").click()
    expect(secret_dialog.locator(".copied")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shoot(page, "secret-dialog")
    secret_dialog.get_by_role("button", name="Done").click()
    expect(secret_dialog).to_be_hidden()

    # The key works, it is listed, and the secret is never shown again.
    status, info = api("GET", "/v1/key", secret)
    assert status == 200 and info["name"] == "browser key", info
    page.goto("/console/keys")
    listed = row(page, "browser key")
    expect(listed).to_have_count(1)
    expect(listed).to_contain_text(secret[-4:])  # the partial key
    expect(listed).to_contain_text("active")
    expect(listed).to_contain_text("key:")  # created by the admin key
    assert secret not in page.content()
    shoot(page, "keys")
    shared["secret"] = secret


def test_usage_chart_and_violation_log_after_proxied_requests(browser):
    page = shared["admin"]
    for _ in range(3):
        status, answer = chat(shared["secret"])
        assert status == 200, answer
    # A key limited to 1 request a minute, refused once: the violation log shows it.
    status, limited = api("POST", "/admin/v1/keys", ADMIN_KEY,
                          {"name": "limited key", "limits": {"rpm": 1}})
    assert status == 201, limited
    assert chat(limited["secret"])[0] == 200
    assert chat(limited["secret"])[0] == 429

    page.goto("/console/keys")
    page.get_by_role("link", name="browser key", exact=True).click()
    expect(page.get_by_role("heading", name="Key browser key")).to_be_visible()
    expect(page.locator("#usage-charts figure.chart")).to_have_count(3)
    expect(page.locator("#usage-charts canvas")).to_have_count(3)
    usage = page.locator("#usage tbody tr").first
    expect(usage).to_contain_text("mock-model")
    expect(usage.locator("td").nth(2)).to_have_text("3")
    shoot(page, "key-usage")
    page.get_by_role("link", name="Last 30 days").click()
    expect(page.locator("#usage caption")).to_contain_text("last 30 days")
    expect(page.locator("#usage-charts canvas")).to_have_count(3)

    page.goto("/console/keys")
    page.get_by_role("link", name="limited key", exact=True).click()
    refusal = page.locator("#violations tbody tr").first
    expect(refusal).to_contain_text("rpm")
    expect(refusal).to_contain_text("1")
    shoot(page, "key-violations")


def test_delete_a_key_with_confirmation(browser):
    page = shared["admin"]
    page.goto("/console/keys")
    row(page, "browser key").get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", name="Delete key")).to_be_visible()
    shoot(page, "delete-confirm")
    page.get_by_role("button", name="Delete browser key").click()
    expect(page).to_have_url(URL + "/console/keys")
    expect(row(page, "browser key")).to_have_count(0)
    status, _ = api("GET", "/v1/key", shared["secret"])
    assert status == 401


def test_audit_log_and_members(browser):
    page = shared["admin"]
    page.get_by_role("link", name="Audit log").click()
    expect(page).to_have_url(URL + "/console/audit")
    audit = page.locator("#audit")
    for action in ["console.sign_in", "key.create", "key.revoke"]:
        expect(audit).to_contain_text(action)
    assert ADMIN_KEY not in page.content() and shared["secret"] not in page.content()
    shoot(page, "audit")
    page.get_by_role("link", name="Members").click()
    members = page.locator("#members")
    for name in ["ada", "max", "mia"]:
        expect(members).to_contain_text(name)
    shoot(page, "members")


def sign_in_member(browser, username):
    """Signs in with the keyboard only: fields in tab order, Enter submits."""
    page = new_page(browser)
    page.goto("/console/sign-in")
    page.get_by_label("Workspace").focus()
    page.keyboard.press("Tab")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(URL + "/console/keys")
    return page


def create(page, name):
    page.get_by_role("link", name="New key").click()
    page.locator("#create-dialog").get_by_label("Name").fill(name)
    page.locator("#create-dialog").get_by_role("button", name="Create key").click()
    expect(page.locator("#secret-dialog")).to_be_visible()
    page.locator("#secret-dialog").get_by_role("button", name="Done").click()


def test_a_member_is_offered_only_what_a_member_may_do(browser):
    mia = sign_in_member(browser, "mia")
    create(mia, "mia key")
    max_ = sign_in_member(browser, "max")
    create(max_, "max key")
    max_.goto("/console/keys")

    # No admin keys, no members or audit log, no delete button on others' keys.
    expect(max_.get_by_role("link", name="Members")).to_have_count(0)
    expect(max_.get_by_role("link", name="Audit log")).to_have_count(0)
    max_.get_by_role("link", name="New key").click()
    expect(max_.locator("#create-dialog").get_by_label("Name")).to_be_visible()
    expect(max_.locator("#key-kind")).to_have_count(0)
    max_.keyboard.press("Escape")
    expect(row(max_, "max key").get_by_role("link", name="Delete")).to_have_count(1)
    expect(row(max_, "mia key").get_by_role("link", name="Delete")).to_have_count(0)
    expect(row(max_, "limited key").get_by_role("link", name="Delete")).to_have_count(0)
    expect(row(max_, "mia key")).to_contain_text("member:mia")
    shoot(max_, "keys-member")

    # A POST without the CSRF token is refused, even with the session cookie.
    refused = max_.request.post(URL + "/console/keys", form={"name": "forged"})
    assert refused.status == 403, refused.status
    assert "CSRF token" in refused.text()

    max_.get_by_role("button", name="Sign out").click()
    expect(max_).to_have_url(URL + "/console/sign-in")
    max_.goto("/console/keys")
    expect(max_).to_have_url(URL + "/console/sign-in")


def test_no_script_errors_or_csp_violations():
    assert problems == [], problems
