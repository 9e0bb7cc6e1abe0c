"""`bt serve` tried as an attacker would (issue 18), its paths and models: nothing the server did not create is
destroyed (an index is a plain name, never a file), nothing outside the roots is read (globs, walks, links), only
allowed models load. Each test was written against the old server and seen to fail there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
from conftest import DEVICE

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import DOT
from helpers import served as serving

from bridgetower_cli.server import Settings, create_app  # noqa: E402

LOCAL = "http://127.0.0.1"  # a TestClient's requests arrive on loopback


@pytest.fixture(scope="module")
def tree(tmp_path_factory, samples) -> dict[str, Path]:
    """A served root with photos, a text file and a bt index; outside it, a secret folder and photo, reachable
    from inside the root only through symlinks (a folder link, a file link)."""
    base = tmp_path_factory.mktemp("attack")
    root, outside = base / "root", base / "outside"
    (root / "photos").mkdir(parents=True)
    outside.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(samples / name, root / "photos" / name)
    shutil.copy(samples / "rocket.jpg", outside / "secret.jpg")
    (root / "notes.txt").write_text("my notes\n")
    (root / "photos" / "k").symlink_to(outside, target_is_directory=True)  # a folder link out of the root
    (root / "photos" / "linked.jpg").symlink_to(outside / "secret.jpg")  # a file link out of the root
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def served(full_checkpoint, tree):
    """A real server on 127.0.0.1 (uvicorn in a thread) over the attack tree: (URL, app)."""
    settings = Settings(
        models=[str(full_checkpoint)],
        device=DEVICE,
        dtype="float32",
        allow_paths=[tree["root"].resolve()],
        index_dir=tree["base"] / "indexes",
    )
    app = create_app(settings)
    with serving(app, ready_s=60) as url:
        yield url, app


def retrieve(url: str, model: Path, **fields) -> requests.Response:
    return requests.post(f"{url}/v1/retrieve", json={"model": str(model), "query": "a cat", **fields}, timeout=120)


# -- 1. nothing destroyed ---------------------------------------------------------------------------------------


def test_rebuild_cannot_unlink_a_photo_or_a_text_file(served, full_checkpoint, tree):
    url, _ = served
    photo, notes = tree["root"] / "photos" / "cat.jpg", tree["root"] / "notes.txt"
    before = photo.read_bytes(), notes.read_bytes()
    for victim in (photo, notes):
        answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / "photos")], index=str(victim), rebuild=True)
        assert answer.status_code == 422 and "plain name" in answer.json()["error"]
    assert (photo.read_bytes(), notes.read_bytes()) == before


def test_an_index_name_with_glob_characters_touches_no_other_index(served, full_checkpoint, tree):
    url, _ = served
    sources = [str(tree["root"] / "photos")]
    assert retrieve(url, full_checkpoint, sources=sources, index="one", rerank_k=0).status_code == 200
    vectors = sorted((tree["base"] / "indexes").glob("one.sqlite.vectors-*"))
    assert vectors
    for name in ("*", "o*", "[o]ne", "../one", ".hidden", "a/b", "one two"):
        answer = retrieve(url, full_checkpoint, sources=sources, index=name, rebuild=True, rerank_k=0)
        assert answer.status_code == 422, name
    # a name that spells another index's vector file is a distinct index of its own, and harms none
    lookalike = retrieve(url, full_checkpoint, sources=sources, index="one.sqlite.vectors-0", rebuild=True, rerank_k=0)
    assert lookalike.status_code == 200
    assert retrieve(url, full_checkpoint, sources=sources, index="one", rerank_k=0).status_code == 200
    assert all(v.exists() for v in vectors) and (tree["base"] / "indexes" / "one.sqlite").exists()


def test_rebuild_needs_an_index_name(served, full_checkpoint, tree):
    url, _ = served
    answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / "photos")], rebuild=True, rerank_k=0)
    assert answer.status_code == 422 and "index" in answer.json()["error"]


@pytest.mark.parametrize("content", [b"my notes\n", b"SQLite format 3\x00" + b"\x00" * 200])
def test_the_cli_refuses_a_file_that_is_not_a_bt_index(bt, full_checkpoint, samples, tmp_path, content):
    victim = tmp_path / "victim.sqlite"
    victim.write_bytes(content)
    for extra in ([], ["--rebuild"]):
        result = bt("index", samples / "cat.jpg", "--index", victim, "-m", full_checkpoint, *extra)
        assert result.code == 1 and "not a bt index" in result.stderr, result.stderr
    assert victim.read_bytes() == content


def test_with_a_server_the_index_is_a_name(bt, samples):
    result = bt("retrieve", "a cat", samples, "--index", "/tmp/x.sqlite", "--server", "http://127.0.0.1:9")
    assert result.code == 1 and "plain name" in result.stderr


# -- 2. nothing read outside the roots ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, inside",
    [("photos/[k]/*.jpg", []), ("photos/*/*.jpg", []), ("photos/**/*.jpg", ["cat.jpg", "coffee.jpg"])],
)
def test_globs_never_reach_outside_the_roots(served, full_checkpoint, tree, pattern, inside):
    url, _ = served
    answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / pattern)], index="globs", rerank_k=0)
    if not inside:  # the only matches lie through a folder link out of the root: none
        assert answer.status_code == 422 and "no image files in" in answer.json()["error"]
        return
    assert answer.status_code == 200
    assert sorted(Path(r["image"]).name for r in answer.json()["records"]) == inside


def test_a_walk_does_not_follow_a_file_link_out_of_the_root(served, full_checkpoint, tree):
    url, _ = served
    answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / "photos")], index="walk", rerank_k=0)
    assert answer.status_code == 200
    assert sorted(Path(r["image"]).name for r in answer.json()["records"]) == ["cat.jpg", "coffee.jpg"]


def test_a_link_out_of_the_root_and_a_missing_path_get_the_same_answer(served, full_checkpoint, tree):
    url, _ = served
    answers = [
        retrieve(url, full_checkpoint, sources=[str(path)], index="links", rerank_k=0)
        for path in (tree["root"] / "photos" / "linked.jpg", tree["root"] / "photos" / "k", tree["outside"], "/nope/x")
    ]
    assert {a.status_code for a in answers} == {403}
    assert len({a.json()["error"].split(" is ")[-1] for a in answers}) == 1


# -- 3. models by allow-list --------------------------------------------------------------------------------------


def test_only_allowed_models_load(served, full_checkpoint, checkpoints, tmp_path):
    url, app = served
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "clip", "secret_value": "xyzzy"}')
    answers = {
        name: requests.post(f"{url}/v1/score", json={"model": name, "images": [DOT], "texts": ["a"]}, timeout=60)
        for name in (str(checkpoints["itm_mlm"]), str(foreign), "/no/such/dir", "someone/else")
    }
    assert {a.status_code for a in answers.values()} == {403}
    assert len({a.json()["error"].replace(name, "MODEL") for name, a in answers.items()}) == 1
    assert all("xyzzy" not in a.text and "clip" not in a.text for a in answers.values())
    assert str(full_checkpoint) in answers["/no/such/dir"].json()["hint"]


def test_spellings_of_one_model_share_one_copy(served, full_checkpoint):
    url, app = served
    for spelling in (str(full_checkpoint), f"{full_checkpoint}/", f"{full_checkpoint}/../{full_checkpoint.name}"):
        answer = requests.post(f"{url}/v1/score", json={"model": spelling, "images": [DOT], "texts": ["a"]}, timeout=60)
        assert answer.status_code == 200, answer.text
    assert len(app.state.pool.models) == 1


def test_least_recently_used_models_are_unloaded_past_max_models(checkpoints):
    paths = [str(checkpoints[name]) for name in ("full", "itm_mlm", "itc")]
    app = create_app(Settings(models=paths, device=DEVICE, max_models=2, no_pull=True))
    with TestClient(app, base_url=LOCAL) as client:
        for path in (paths[0], paths[1], paths[0], paths[2]):
            head = "itc" if path == paths[2] else "itm"
            route, body = (
                ("/v1/embed", {"kind": "text", "texts": ["a"]})
                if head == "itc"
                else ("/v1/score", {"images": [DOT], "texts": ["a"]})
            )
            assert client.post(route, json={"model": path, **body}).status_code == 200
        assert sorted(app.state.pool.models) == sorted([paths[0], paths[2]])
