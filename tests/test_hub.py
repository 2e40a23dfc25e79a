"""push_to_hub against a local Hub endpoint (HF_ENDPOINT on loopback) that checks what arrives.

The server implements the calls huggingface_hub 2.x makes for ``HfApi.create_repo`` + ``upload_folder``
(and transformers' ``model.push_to_hub``): repo creation, README metadata validation, the preupload
decision (small files inline, weights/images via LFS), the LFS batch API with a basic PUT upload and
verify step, and the NDJSON commit; then the calls of a download (repo info, file HEAD/GET). Anything
else it is asked is answered 404 and recorded, so the test also shows no other endpoint is needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tiny
import torch
import yaml
from helpers import pruned, tokenizer
from transformers import AutoTokenizer

import structprune as sp
from structprune.checkpoint import remote_modeling as rm

TOKEN = "hf_local_test_token"
LFS_SUFFIXES = (".safetensors", ".png", ".onnx")


class LocalHub:
    """A minimal in-memory Hub: ``repos[repo_id][path] = bytes`` after each commit."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.heads: dict[str, str] = {}  # repo id -> commit oid of its last commit
        self.lfs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.unauthorized: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _send(self, status: int, payload=None, headers: dict | None = None):
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _route(self):
                path = self.path.split("?", 1)[0]
                hub.calls.append((self.command, path))
                body = self._body()
                signed = path.startswith("/lfs-")  # LFS storage URLs are pre-signed
                if (
                    self.command in ("POST", "PUT")
                    and not signed
                    and self.headers.get("Authorization") != f"Bearer {TOKEN}"
                ):
                    hub.unauthorized.append(path)
                    return self._send(401, {"error": "Invalid credentials"})
                return hub.handle(self, self.command, path, body)

            do_GET = do_POST = do_PUT = do_HEAD = _route

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, h, method: str, path: str, body: bytes):
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            repo_id = (
                f"{req['organization']}/{req['name']}" if req.get("organization") else f"user/{req['name']}"
            )
            if repo_id in self.repos:
                return h._send(409, {"error": "You already created this model repo"})
            self.repos[repo_id] = {}
            return h._send(200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
            try:
                assert match and isinstance(yaml.safe_load(match.group(1)), dict)
            except (AssertionError, yaml.YAMLError):
                return h._send(400, {"errors": [{"message": "invalid metadata"}]})
            return h._send(200, {"errors": [], "warnings": []})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
            if m.group(1) not in self.repos:
                return h._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                 "shouldIgnore": False}
                for f in files
            ]  # fmt: skip
            return h._send(200, {"files": modes})
        if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            req = json.loads(body)
            objects = [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"},
                             "verify": {"href": f"{self.url}/lfs-verify"}}}
                for o in req["objects"]
            ]  # fmt: skip
            return h._send(200, {"transfer": "basic", "objects": objects})
        if method == "PUT" and (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)):
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return h._send(400, {"error": "sha256 mismatch"})
            self.lfs[m.group(1)] = body
            return h._send(200)
        if method == "POST" and path == "/lfs-verify":
            req = json.loads(body)
            ok = req["oid"] in self.lfs and len(self.lfs[req["oid"]]) == req["size"]
            return h._send(200 if ok else 404, {})
        if method == "POST" and (m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)):
            repo_id = m.group(1)
            files = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    if item["value"]["oid"] not in self.lfs:
                        return h._send(
                            400, {"error": f"LFS object of {item['value']['path']} was never uploaded"}
                        )
                    files[item["value"]["path"]] = self.lfs[item["value"]["oid"]]
            self.repos[repo_id].update(files)
            oid = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
            self.heads[repo_id] = oid
            return h._send(
                200,
                {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
            )
        if method == "GET" and (m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)):
            if m.group(1) not in self.heads:
                return h._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            files = [{"rfilename": name} for name in sorted(self.repos[m.group(1)])]
            return h._send(200, {"id": m.group(1), "sha": self.heads[m.group(1)], "siblings": files})
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            content = self.repos.get(m.group(1), {}).get(m.group(3))
            if content is None:
                return h._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            h.send_response(200)
            h.send_header("Content-Length", str(len(content)))
            h.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            h.send_header("X-Repo-Commit", self.heads[m.group(1)])
            h.end_headers()
            if method == "GET":
                h.wfile.write(content)
            return None
        self.unknown.append((method, path))
        return h._send(404, {"error": f"not implemented: {method} {path}"})


@pytest.fixture
def hub():
    server = LocalHub()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


_PUSH = r"""
import sys
import structprune as sp
from structprune.checkpoint.card import CardInfo

staged, card = sys.argv[1], sys.argv[2]
model = sp.from_pretrained(staged)  # its tokenizer comes along (tokenizer="auto")
info = sp.push_to_hub(model, "me/pruned", card=CardInfo(**__import__("json").loads(card)))
print("COMMIT", info.commit_url)
model.push_to_hub("me/plain")  # transformers' own method

# Download what arrived, through the Hub client, and compare.
import torch
from transformers import AutoModelForSequenceClassification

x = {"input_ids": torch.randint(3, 99, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
with torch.no_grad():
    want = model(**x).logits
    for repo in ("me/pruned", "me/plain"):
        for load in (sp.from_pretrained, AutoModelForSequenceClassification.from_pretrained):
            assert torch.equal(load(repo).eval()(**x).logits, want), (repo, load)
print("DOWNLOADED")
"""


@pytest.mark.parametrize("family", ["mpnet", "modernbert", "deberta-v2"])  # layouts beyond BERT's
def test_push_to_hub_uploads_exactly_the_saved_folder(hub, tmp_path, family):
    model = pruned(family)
    card = {"base_model": "org/teacher", "budget": "50% encoder FLOPs", "datasets": ["nyu-mll/glue"]}
    # Everything up to the HTTP call: the folder push_to_hub stages is the one save_pretrained writes.
    tokenizer(tmp_path).save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")  # as loaded from disk, like the push reloads it
    staged = sp.save_pretrained(model, tmp_path / "staged", tokenizer=tok, card=sp.CardInfo(**card))
    expected = {p.name: p.read_bytes() for p in staged.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        rm.MODELING_FILE,
        "README.md",
        "structure.png",
        "tokenizer.json",
    } <= set(expected)

    script = tmp_path / "push.py"
    script.write_text(_PUSH)
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",  # the Xet protocol is not implemented by the local server
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(staged), json.dumps(card)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"COMMIT {hub.url}/me/pruned/commit/" in proc.stdout
    assert "DOWNLOADED" in proc.stdout  # sp.from_pretrained and AutoModel* from the repo id

    # sp.push_to_hub: every file, byte for byte, weights through LFS.
    got = dict(hub.repos["me/pruned"])
    # tokenizer_config.json is re-written by transformers when push_to_hub reloads the tokenizer in the
    # subprocess; a bookkeeping field in it has been seen to differ with what the test process loaded
    # before. Everything that defines the tokenizer must match; every other file byte for byte.
    tok_got, tok_expected = (json.loads(d.pop("tokenizer_config.json")) for d in (got, dict(expected)))
    for key in (
        "tokenizer_class",
        "do_lower_case",
        "cls_token",
        "sep_token",
        "pad_token",
        "unk_token",
        "mask_token",
    ):
        assert tok_got.get(key) == tok_expected.get(key), key
    assert got == {k: v for k, v in expected.items() if k != "tokenizer_config.json"}
    lfs_puts = {p for m, p in hub.calls if m == "PUT"}
    assert len(lfs_puts) == 2  # model.safetensors and structure.png
    # model.push_to_hub: weights, config and the modeling file (transformers writes its own README).
    plain = hub.repos["me/plain"]
    assert plain["model.safetensors"] == expected["model.safetensors"]
    assert plain[rm.MODELING_FILE] == expected[rm.MODELING_FILE]
    assert (
        json.loads(plain["config.json"])["structprune"] == json.loads(expected["config.json"])["structprune"]
    )
    assert not hub.unauthorized
    assert not hub.unknown, hub.unknown

    # What arrived loads and computes what the model computes.
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    for name, data in plain.items():
        (arrived / name).write_bytes(data)
    b = {"input_ids": torch.randint(3, 99, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(sp.from_pretrained(arrived)(**b).logits, model(**b).logits)


_PUSH_VOCAB = r"""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer
import structprune as sp

staged, texts = sys.argv[1], json.loads(sys.argv[2])
want = load_file(sys.argv[3])["logits"]  # the model before vocabulary pruning, with the original tokenizer
model, tok = sp.from_pretrained(staged), AutoTokenizer.from_pretrained(staged)
info = sp.push_to_hub(model, "me/vocab-pruned", tokenizer=tok)
print("COMMIT", info.commit_url)

tok2 = AutoTokenizer.from_pretrained("me/vocab-pruned")  # downloaded by repo id
assert tok2.get_vocab() == tok.get_vocab() and len(tok2) == model.config.vocab_size < 23
feed = tok2(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    for load in (sp.from_pretrained, AutoModelForSequenceClassification.from_pretrained):
        loaded = load("me/vocab-pruned").eval()
        assert loaded.get_input_embeddings().num_embeddings == len(tok2)
        assert torch.equal(loaded(**feed).logits, want), load
print("DOWNLOADED")
"""


def test_push_to_hub_a_vocabulary_pruned_model_and_its_tokenizer(hub, tmp_path):
    from safetensors.torch import save_file

    model, texts = pruned("bert"), ["the movie was good", "a boring plot", "the actors were great"]
    tiny.tokenizer().save_pretrained(tmp_path / "tok")  # WordPiece over tiny.WORDS (ids < the model's 99)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    with torch.no_grad():
        want = model.eval()(**tok(texts, padding=True, return_tensors="pt")).logits
    _, small = sp.prune_vocab(model, tok, texts + ["it is fun"], source="four test sentences")
    assert len(small) < len(tok) and model.config.vocab_size == len(small)
    staged = sp.save_pretrained(model, tmp_path / "staged", tokenizer=small)
    assert "| Vocabulary | " in (staged / "README.md").read_text()
    expected = {p.name: p.read_bytes() for p in staged.iterdir()}
    save_file({"logits": want.contiguous()}, str(tmp_path / "want.safetensors"))

    script = tmp_path / "push_vocab.py"
    script.write_text(_PUSH_VOCAB)
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(staged), json.dumps(texts), str(tmp_path / "want.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"COMMIT {hub.url}/me/vocab-pruned/commit/" in proc.stdout and "DOWNLOADED" in proc.stdout
    got = dict(hub.repos["me/vocab-pruned"])
    # the weights (pruned embeddings), config, modeling file and tokenizer arrived byte for byte (the card was
    # re-written from the reloaded model, which carries no notes; tokenizer_config.json: see the test above)
    for name in ("model.safetensors", "config.json", rm.MODELING_FILE, "tokenizer.json"):
        assert got[name] == expected[name], name
    # AutoTokenizer also lists the repo's tree (optional chat templates), which the local Hub answers 404
    assert not [call for call in hub.unknown if "/tree/main" not in call[1]], hub.unknown


def test_push_to_hub_rejects_bad_repo_ids():
    with pytest.raises(ValueError, match="namespace/name"):
        sp.push_to_hub(pruned("bert"), "a/b/c")
    assert Path(__file__).exists()
