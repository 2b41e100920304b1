"""Bad input is refused in one line, or warned about in the log and the report (issue #11)."""

from __future__ import annotations

import _thread
import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import make_cub
from helpers import NAME, SHARED, read_only, tiny_config
from processes import patience

from harness.cli import main
from harness.data import get_dataset
from harness.errors import ConfigError
from harness.study import parse_config


@pytest.fixture
def cub(tmp_path: Path) -> Path:
    return make_cub(tmp_path / "data", per_class=2)


@pytest.fixture
def any_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(get_dataset("cub")), "num_images", None)


def verify(cub: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["data", "verify", "--dataset", "cub", "--root", str(cub)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def edit(path: Path, change) -> None:  # noqa: ANN001
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("\n".join(lines) + "\n")


# --- data verification --------------------------------------------------------------------------


def test_a_duplicate_image_id_is_refused(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(cub / "images.txt", lambda lines: lines.__setitem__(5, lines[4]))  # id 5 twice, id 6 gone
    msg = verify(cub, capsys)
    assert f"{cub / 'images.txt'}:6: id 5 is listed twice (first on line 5)" in msg


def test_a_duplicate_label_id_is_refused(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(cub / "image_class_labels.txt", lambda lines: lines.append("7 150"))  # a second label for 7
    assert "id 7 is listed twice" in verify(cub, capsys)


def test_one_file_listed_under_two_ids_is_refused(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def twice(lines: list[str]) -> None:
        lines[5] = "6 " + lines[4].split()[1]

    edit(cub / "images.txt", twice)
    msg = verify(cub, capsys)
    assert "is listed twice (also as image id 5)" in msg


def test_a_label_outside_the_class_list_is_refused(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(cub / "image_class_labels.txt", lambda lines: lines.__setitem__(0, "1 201"))
    msg = verify(cub, capsys)
    assert "image id 1" in msg and "class 201" in msg and "classes.txt does not list" in msg


def test_a_label_for_an_unknown_image_is_refused(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(cub / "image_class_labels.txt", lambda lines: lines.append("9999 3"))
    assert "labels for image id 9999 missing from images.txt" in verify(cub, capsys)


def test_a_non_numeric_id_is_refused(cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]) -> None:
    edit(cub / "images.txt", lambda lines: lines.__setitem__(2, "three " + lines[2].split()[1]))
    assert f"{cub / 'images.txt'}:3: 'three' is not an id" in verify(cub, capsys)


@pytest.mark.slow
def test_real_cub_with_a_duplicated_id_fails_strict_verification(tmp_path: Path) -> None:
    real = SHARED / "data" / "cub200-128" / "CUB_200_2011"
    if not real.is_dir():
        pytest.skip("no shared CUB-128 copy")
    copy = tmp_path / "CUB_200_2011"
    copy.mkdir()
    (copy / "images").symlink_to(real / "images")
    for name in ("images.txt", "image_class_labels.txt", "classes.txt"):
        (copy / name).write_text((real / name).read_text())
    edit(copy / "images.txt", lambda lines: lines.__setitem__(11787, "11787 " + lines[11787].split()[1]))
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "data", "verify", "--dataset", "cub", "--root", str(copy)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "id 11787 is listed twice" in r.stderr, r.stderr


# --- config values -------------------------------------------------------------------------------


BASE = {"name": "x", "dataset": "cub"}


def test_val_fraction_that_leaves_too_few_classes_names_val_fraction() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE | {"val_fraction": 0.99})
    msg = str(info.value)
    assert "val_fraction 0.99" in msg and "leaving 1 to train on" in msg and "batch_p reaches 16" in msg
    assert "lower val_fraction (at most 0.84)" in msg


def test_val_fraction_on_a_subset_is_named_when_the_data_is_loaded(tmp_path: Path) -> None:
    from harness.study.data import prepare

    root = make_cub(tmp_path / "data", per_class=2)
    raw = tiny_config(root, tmp_path / "results") | {"val_fraction": 0.97}
    with pytest.raises(ConfigError, match="val_fraction 0.97 makes 97 of the 100 training classes"):
        prepare(parse_config(raw))


@pytest.mark.parametrize(
    "text, fix",
    [("1.0e6", "write 1.0e+6"), ("1e-3", "write 1.0e-3"), ("5e-05", "write 5.0e-5")],
)
def test_yaml_exponents_are_explained(text: str, fix: str, tmp_path: Path) -> None:
    from harness.study.config import load_config

    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\ndataset: cub\nsearch_space:\n  lr: {{low: 1.0e-5, high: {text}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "YAML 1.1" in msg and "sign in its exponent" in msg and fix in msg
    assert "floats need a dot" not in msg


def test_a_quoted_number_is_explained(tmp_path: Path) -> None:
    from harness.study.config import load_config

    path = tmp_path / "s.yaml"
    path.write_text("name: x\ndataset: cub\nsearch_space:\n  lr: '0.001'\n")
    with pytest.raises(ConfigError, match="because it is quoted: unquote it"):
        load_config(path)


def _run_to_report(raw: dict, tmp_path: Path) -> str:
    """Run the study, evaluate its best config once, build the report; returns the report page."""
    raw["evaluate"] = {"top_n": 1, "seeds": 1, "references": False}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main([*argv, "--config", str(path)]) == 0
    return (tmp_path / "results" / NAME / "report" / "index.html").read_text()


def test_empty_search_space_is_warned_in_the_log_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=2)
    raw["search_space"] = {"mining": "semihard", "batch_p": 4, "batch_k": 2, "embedding_dim": 16}
    page = _run_to_report(raw, tmp_path)
    assert "search_space varies nothing" in capsys.readouterr().err
    assert 'class="note">Warning: search_space varies nothing' in page


def test_batch_k_above_the_smallest_class_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cub(tmp_path / "data", per_class=3, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=1)
    raw["search_space"] = raw["search_space"] | {"batch_k": {"choices": [2, 4]}}
    page = _run_to_report(raw, tmp_path)
    assert "batch_k reaches 4, but some training class has only 3 images" in capsys.readouterr().err
    assert "sampled with replacement" in page


# --- messages -----------------------------------------------------------------------------------


def test_negative_threads_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--threads", "-1", "study", "run", "--config", "x.yaml"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: harness: argument --threads: expected a whole number >= 1, got -1 (see --help)"]


def test_a_truncated_image_cache_is_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.data import get_dataset
    from harness.data.cache import cache_path, load_image_cache

    root = make_cub(tmp_path / "data", per_class=2)
    images = get_dataset("cub").load(root, strict_counts=False)
    first = np.array(load_image_cache(images, "k", 16, tmp_path / "cache"))
    path = cache_path(images, "k", 16, tmp_path / "cache")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    again = load_image_cache(images, "k", 16, tmp_path / "cache")
    assert np.array_equal(first, again)
    assert path.with_name(path.name + ".damaged").is_file()


def test_ctrl_c_while_decoding_is_one_line_and_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import harness.data.cache

    root = make_cub(tmp_path / "data", per_class=3)
    raw = tiny_config(root, tmp_path / "results")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    real = harness.data.cache.decode
    started = threading.Event()

    calls = [0]

    def slow(p: Path, size: int | None = None) -> np.ndarray:
        started.set()
        calls[0] += 1
        time.sleep(0.05)  # 600 images: 30 s over one thread if nothing stops it
        return real(p, size)

    monkeypatch.setattr(harness.data.cache, "decode", slow)
    consumed = [0]  # images the main thread took from the pool: where the interrupt lands
    handling = threading.Event()  # the interrupt reached the cache: its cleanup began

    class Counted(harness.data.cache.Progress):
        def update(self, n: int = 1, note: str = "") -> None:
            consumed[0] += n
            super().update(n, note)

    class Pool(harness.data.cache.ThreadPoolExecutor):
        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            if cancel_futures:
                handling.set()
            super().shutdown(wait, cancel_futures=cancel_futures)

    monkeypatch.setattr(harness.data.cache, "Progress", Counted)
    monkeypatch.setattr(harness.data.cache, "ThreadPoolExecutor", Pool)
    done = threading.Event()

    def press_ctrl_c() -> None:
        started.wait(30)
        time.sleep(0.3)
        # Python drops a KeyboardInterrupt that lands inside a finaliser or weakref callback
        # ("Exception ignored in ..."), as it would a user's first Ctrl-C there: press again, as
        # the user would, but only once the main thread has visibly gone on past the last press
        # (two more images taken), never while the interrupt is being handled. Pool threads'
        # decodes say nothing here: they run on while a starved main thread has not yet looked.
        deadline = time.monotonic() + patience(120)
        while not (done.is_set() or handling.is_set()) and time.monotonic() < deadline:
            _thread.interrupt_main()
            before = consumed[0]
            while not (done.is_set() or handling.is_set()) and time.monotonic() < deadline:
                if consumed[0] >= before + 2:
                    break
                time.sleep(0.01)

    gc.collect()  # leave no garbage from earlier tests whose finalisers could swallow the interrupt
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        code = main(["--threads", "1", "data", "prepare", "--config", str(path)])
    finally:
        try:  # a press that raced main's return lands here, never in the next test
            done.set()
            presser.join(30)
            time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert code == 130
    assert errors == ["error: interrupted (Ctrl-C); finished work is kept: rerun the same command to go on"]
    assert not any("Traceback" in line for line in err)
    assert calls[0] < 600, calls  # stopped mid-way: not every one of the 600 images was decoded
    assert not list((tmp_path / "results" / "cache" / "images").glob("*.part"))  # no half-written cache


def test_sigint_names_itself() -> None:
    from harness.study.signals import signal_name

    assert signal_name(KeyboardInterrupt()) == "SIGINT (Ctrl-C)"
    assert signal_name(KeyboardInterrupt("signal 15")) == "SIGTERM"


def test_only_the_first_signal_stops_a_worker() -> None:
    """Ctrl-C pressed twice, or SLURM's SIGTERM reaching a worker group and then forwarded to its
    processes: the second signal must not interrupt the re-queue the first one started. Each signal
    is raised in the main thread (``raise_signal``): ``os.kill`` of the own pid lets the kernel hand
    it to any thread, and on a busy machine it can arrive after the ``check`` that expects it."""
    import signal

    from harness.study.signals import Signals, signal_name

    with Signals() as signals:
        signals.interruptible = True
        with pytest.raises(KeyboardInterrupt) as first:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
        assert signal_name(first.value) == "SIGTERM"
        signal.raise_signal(signal.SIGINT)  # during the re-queue, still interruptible
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.05)  # both handled by now: ignored, nothing raised
    with Signals() as signals:  # outside a trial: held until the step is done, then raised once
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # a forwarded copy, milliseconds later: ignored
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt) as held:
            signals.check()
        assert signal_name(held.value) == "SIGINT (Ctrl-C)"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with Signals() as signals:  # held while waiting on a lock: a person's second Ctrl-C stops the wait
        signals.FORCE_AFTER = 0.1
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.2)
        signal.raise_signal(signal.SIGTERM)  # SIGTERM never forces
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            time.sleep(1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # started in the background by a script
    try:
        with Signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # stays ignored
    finally:
        signal.signal(signal.SIGINT, previous)


def test_evaluate_on_a_read_only_results_folder_is_one_line(tmp_path: Path) -> None:
    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=1)
    raw["evaluate"] = {"top_n": 1, "seeds": 1, "references": False}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", "run", "--config", str(path)]) == 0
    results = tmp_path / "results"
    modes = {p: p.stat().st_mode for p in [results, *results.rglob("*")]}
    cmd = [sys.executable, "-m", "harness.cli", "evaluate", "--config", str(path)]
    try:
        r = subprocess.run(read_only(results, cmd), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "cannot write to" in errors[0] and "writable" in errors[0]
    assert not (results / NAME / "test.csv").exists()
