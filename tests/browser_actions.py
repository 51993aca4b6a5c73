"""Driving the explanation browser (workflow_scripts/browser_assets) in a selenium session: open it, wait
for its rows (body[data-state] says loading, ready or error), read the rows shown, use its controls."""
from __future__ import annotations


def open_page(driver, url):
    """Open `url` and wait for its rows; on the page already (a new address hash), no reload happens, so
    the page is marked loading first, for the wait to see the new state."""
    driver.execute_script("if (document.body) document.body.dataset.state = 'loading';")
    driver.get(url)
    wait_ready(driver)


def wait_ready(driver):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state") != "loading")
    assert driver.execute_script("return document.body.dataset.state") == "ready", status(driver)


def status(driver):
    return driver.find_element("id", "status").text


def shown(driver):
    """Per pane: its model index and its rows (layer, head, text, marked words)."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('.pane')).map(p => [Number(p.dataset.model),
          Array.from(p.querySelectorAll('tr.row')).map(r => [Number(r.dataset.layer), Number(r.dataset.head),
            r.textContent, Array.from(r.querySelectorAll('mark')).map(m => m.textContent)])]);""")


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)
    wait_ready(driver)


def search(driver, word):
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "word")
    box.clear()
    box.send_keys(word + Keys.ENTER)
    wait_ready(driver)


def click(driver, element_id):
    driver.find_element("id", element_id).click()
    wait_ready(driver)
