"""Cards, publishing and downloading, against a loopback stub of the Hub API (tests never reach the real Hub)."""

import base64
import hashlib
import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler, UNet2DModel
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import OfflineModeIsEnabled

from diffusion_classifiers import DiffusionClassifierPipeline, LinearProbeHead, UNetFeatureClassifierPipeline
from diffusion_classifiers import hub
from diffusion_classifiers.hub import (
    METHODS, download, library_name_of, load_eval_metrics, push_to_hub, render_dataset_card, render_model_card,
    write_dry_run,
)
from diffusion_classifiers.models import unet_config

from .conftest import HIDE_PACKAGE, PACKAGE_HIDDEN, PYTHON, REPO_ROOT, python_subprocess_env

METRICS = {"accuracy": 0.8125, "macro_f1": 0.75, "auc": 0.9}
TOKEN = "hf_stub_token"


def model_card(method="unet_features", **overrides):
    fields = dict(
        model_name="tiny-digits",
        dataset_name="scikit-learn digits",
        dataset_license="BSD-3-Clause",
        metrics=METRICS,
        training_command="accelerate launch examples/unet_features_train.py --dataset digits --output_dir out",
        evaluation_command="python examples/evaluate.py --model_dir out --split test",
        repo_id="org/tiny",
        class_names=["a", "b", "c"],
    )
    return render_model_card(method, **{**fields, **overrides})


def front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


# --- cards -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_model_card_yaml_carries_eval_results_and_body_the_commands(method):
    text = str(model_card(method, medical=True))
    yaml_data = front_matter(text)
    assert yaml_data == ModelCard(text).data.to_dict()
    assert yaml_data["library_name"] == "diffusers" and yaml_data["license"] == "apache-2.0"
    assert yaml_data["tags"] == ["diffusers", "image-classification", "diffusion-classifiers", method, "medical"]
    (result,) = yaml_data["model-index"][0]["results"]
    assert yaml_data["model-index"][0]["name"] == "tiny-digits"
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "scikit-learn digits", "type": "scikit-learn digits", "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"accuracy": 0.8125, "f1": 0.75, "roc_auc": 0.9}
    body = text.split("---\n", 2)[2]
    for expected in (
        "--dataset digits --output_dir out", "--model_dir out --split test", "BSD-3-Clause", "not a diagnostic device",
        'from_pretrained("org/tiny", trust_remote_code=True, use_safetensors=True)', "| Accuracy | 0.8125 |",
        "@inproceedings",
    ):
        assert expected in body
    assert "{{" not in body and "{%" not in body


def test_each_method_cites_its_papers():
    citations = {method: str(model_card(method)).split("```bibtex")[1] for method in METHODS}
    assert "Label-Efficient Semantic Segmentation" in citations["unet_features"]
    assert "Denoising Diffusion Autoencoders" in citations["unet_features"]
    assert "Stochastic Differential Equations" in citations["score_sde"]
    assert "Secretly a Zero-Shot Classifier" in citations["score_sde"]
    assert "Scalable Diffusion Models with Transformers" in citations["rc_dit"]


def test_transformers_card_shows_transformers_usage_and_cards_are_not_medical_by_default():
    text = str(model_card(library_name="transformers", dataset_id="org/digits"))
    assert 'pipeline("image-classification", model="org/tiny", trust_remote_code=True)' in text
    assert "DiffusionClassifierPipeline" not in text and front_matter(text)["library_name"] == "transformers"
    assert "diagnostic" not in text and "medical" not in front_matter(text)["tags"]
    assert front_matter(text)["datasets"] == ["org/digits"]


def test_dataset_card_renders_and_parses():
    card = render_dataset_card(
        dataset_name="PneumoniaMNIST", license="cc-by-4.0", description="Chest X-rays, 28x28.",
        source="https://medmnist.com", class_names=["normal", "pneumonia"], splits={"train": 4708, "test": 624},
        preparation_command="python prepare.py --out data", medical=True,
    )
    text = str(card)
    assert front_matter(text) == card.data.to_dict()
    assert front_matter(text)["license"] == "cc-by-4.0"
    assert front_matter(text)["task_categories"] == ["image-classification"]
    assert "| train | 4708 |" in text and "python prepare.py --out data" in text and "Not for diagnostic use" in text


def test_card_with_missing_field_names_it(tmp_path):
    with pytest.raises(ValueError, match="missing required field.*dataset_license, training_command"):
        model_card(training_command=" ", dataset_license=None)
    with pytest.raises(ValueError, match="missing required field.*metrics"):
        model_card(metrics={})
    custom = tmp_path / "custom.md"
    custom.write_text('{% extends "model_card_base.md" %}{% block method %}DOI {{ dataset_doi }}{% endblock %}')
    with pytest.raises(ValueError, match="custom.md: missing required field.*dataset_doi"):
        model_card(template_path=custom)
    with pytest.raises(ValueError, match="unknown method 'vae'"):
        model_card("vae")
    with pytest.raises(ValueError, match="metric 'accuracy': expected a finite number"):
        model_card(metrics={"accuracy": float("nan")})


def test_load_eval_metrics_reads_demo_and_flat_layouts(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps({"summary": {}, "test": {**METRICS, "confusion_matrix": [[1]]}}))
    (tmp_path / "flat.json").write_text(json.dumps({**METRICS, "auc": None, "num_samples": 3}))
    (tmp_path / "empty.json").write_text(json.dumps({"summary": {"test_accuracy": 1.0}}))
    assert load_eval_metrics(tmp_path / "demo.json") == METRICS
    assert load_eval_metrics(tmp_path / "flat.json") == {"accuracy": 0.8125, "macro_f1": 0.75}
    # QA: an ELBO model 99.9% confident on average at 91.6% accuracy; its card did not say how calibrated it is
    (tmp_path / "calibrated.json").write_text(json.dumps({**METRICS, "calibration": {"ece": 0.088, "bins": []}}))
    assert load_eval_metrics(tmp_path / "calibrated.json") == {**METRICS, "ece": 0.088}
    card = model_card(metrics=load_eval_metrics(tmp_path / "calibrated.json"))
    assert "| Expected calibration error (10 bins) | 0.0880 |" in str(card)
    with pytest.raises(ValueError, match="empty.json: expected metrics .* at the top level or under .test."):
        load_eval_metrics(tmp_path / "empty.json")


def test_load_eval_split_reads_the_recorded_split(tmp_path):
    layouts = {"evaluation": {"split": "val", **METRICS}, "demo": {"summary": {}, "test": METRICS}, "flat": METRICS}
    for name, data in layouts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert [hub.load_eval_split(tmp_path / f"{name}.json") for name in layouts] == ["val", "test", None]


def write_json(path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path.parent


def test_method_and_labels_are_read_from_the_folder(saved_pipeline, tmp_path):
    assert (hub.method_of(saved_pipeline[0]), hub.class_names_of(saved_pipeline[0])) == ("unet_features", ["a", "b", "c"])
    assert hub.positive_class_of(saved_pipeline[0]) is None
    pipelines = {  # model_index.json `_class_name`, as saved now (["module", "Class"]) and by v0.1.0 ("Class")
        "ScoreSDEClassifierPipeline": "score_sde", "RepresentationConditionedDiTPipeline": "rc_dit",
        "RepresentationConditionedDiTImageVariationPipeline": "rc_dit", "UNetFeatureClassifierPipeline": "unet_features",
    }  # fmt: skip
    for class_name, method in pipelines.items():
        for saved_name in (class_name, ["pipeline_module", class_name]):
            index = {"_class_name": saved_name, "head": [None, None]}
            assert hub.method_of(write_json(tmp_path / class_name / "model_index.json", index)) == method
    assert hub.class_names_of(tmp_path / "RepresentationConditionedDiTImageVariationPipeline") is None  # no head
    score_sde = write_json(tmp_path / "sde" / "model_index.json", {
        "_class_name": "ScoreSDEClassifierPipeline", "class_names": ["normal", "pneumonia"], "positive_class": "pneumonia"
    })  # fmt: skip
    assert (hub.class_names_of(score_sde), hub.positive_class_of(score_sde)) == (["normal", "pneumonia"], "pneumonia")
    unnamed = write_json(tmp_path / "unnamed" / "head" / "config.json", {"num_classes": 2, "class_names": None}).parent
    write_json(unnamed / "model_index.json", {"_class_name": "UNetFeatureClassifierPipeline", "head": ["m", "Head"]})
    assert hub.class_names_of(unnamed) == ["0", "1"]  # what the pipeline predicts
    for backbone_type, method in (("unet", "unet_features"), ("encoder", "rc_dit")):
        config = {"model_type": "diffusion-classifier", "backbone_type": backbone_type,
                  "id2label": {str(i): f"c{i}" for i in range(11)}}  # fmt: skip
        exported = write_json(tmp_path / backbone_type / "config.json", config)
        assert (hub.method_of(exported), hub.class_names_of(exported)) == (method, [f"c{i}" for i in range(11)])
    with pytest.raises(ValueError, match=r"pipeline 'StableDiffusionPipeline' is not a classifier of this library"):
        hub.method_of(write_json(tmp_path / "sd" / "model_index.json", {"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match=r"expected an exported diffusion classifier .* got model_type 'vit'"):
        hub.method_of(write_json(tmp_path / "vit" / "config.json", {"model_type": "vit"}))


# --- a loopback stub of the Hub ------------------------------------------------------------------------------------

REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class StubHubHandler(BaseHTTPRequestHandler):
    """Just enough of the Hub API for `create_repo`, `create_commit` (regular uploads) and `snapshot_download`."""

    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a connection may stay silent
    # TCP_NODELAY: a reply's headers and body are two writes, and Nagle's algorithm held the body back for the client's
    # delayed ACK, 40 ms a request (diffusers asks for the repo's info hundreds of times while loading saved code)
    disable_nagle_algorithm = True
    routes = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"/api/models/{REPO}/preupload/[^/]+", "preupload"),
        ("POST", rf"/api/models/{REPO}/commit/[^/]+", "commit"),
        ("GET", rf"/api/models/{REPO}/tree/[^/]+", "tree"),
        ("GET", rf"/api/models/{REPO}(/revision/[^/]+)?", "model_info"),
        ("GET", rf"/{REPO}/resolve/[^/]+/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/{REPO}/resolve/[^/]+/(?P<path>.+)", "resolve"),
    ]

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("HEAD")

    def do_POST(self):
        self.route("POST")

    def route(self, method):
        path = self.path.split("?")[0]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((method, path, self.headers.get("Authorization")))
        for route_method, pattern, name in self.routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                return self.reply(*getattr(self, name)(body, **match.groupdict()))
        self.reply(404, {"error": f"stub: no route for {method} {path}"})

    def reply(self, status, payload, headers=None):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def files(self, repo):
        return self.server.repos.get(repo)

    def commit_sha(self, repo):
        blobs = sorted((path, git_blob_sha(content)) for path, content in self.files(repo).items())
        return hashlib.sha1(json.dumps(blobs).encode()).hexdigest()

    def not_found(self, repo):
        return 404, {"error": f"Repository {repo} not found"}, {"X-Error-Code": "RepoNotFound"}

    def create_repo(self, body):
        request = json.loads(body)
        self.server.created.append(request)
        repo = f"{request['organization']}/{request['name']}"
        self.server.repos.setdefault(repo, {})
        return 200, {"url": f"{self.server.endpoint}/{repo}"}

    def validate_yaml(self, body):
        return 200, {"errors": [], "warnings": []}

    def preupload(self, body, repo):
        if self.files(repo) is None:
            return self.not_found(repo)
        files = json.loads(body)["files"]
        return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    def commit(self, body, repo):
        if self.server.fail_commits:
            return 500, {"error": "stub: internal server error"}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                self.files(repo)[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        sha = self.commit_sha(repo)
        return 200, {"commitUrl": f"{self.server.endpoint}/{repo}/commit/{sha}", "commitOid": sha}

    def model_info(self, body, repo):
        if self.files(repo) is None:
            return self.not_found(repo)
        siblings = [{"rfilename": path} for path in sorted(self.files(repo))]
        return 200, {"id": repo, "sha": self.commit_sha(repo), "siblings": siblings, "private": False}

    def tree(self, body, repo):
        if self.files(repo) is None:
            return self.not_found(repo)
        entries = [
            {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
            for path, content in sorted(self.files(repo).items())
        ]
        return 200, entries

    def resolve(self, body, repo, path):
        content = (self.files(repo) or {}).get(path)
        if content is None:
            return 404, {"error": f"{path} not found"}, {"X-Error-Code": "EntryNotFound"}
        headers = {"X-Repo-Commit": self.commit_sha(repo), "ETag": f'"{git_blob_sha(content)}"',
                   "Content-Type": "application/octet-stream"}
        return 200, content, headers


@pytest.fixture
def stub_hub():
    """A stub Hub on 127.0.0.1 (ephemeral port), stopped after the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHubHandler)
    server.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    server.repos, server.created, server.requests, server.fail_commits = {}, [], [], False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def run_against(server, tmp_path, script, **env_overrides):
    """Run `script` in a fresh interpreter whose huggingface_hub talks to `server`, online, with its own HF_HOME."""
    env = dict(
        python_subprocess_env(), HF_ENDPOINT=server.endpoint, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
        HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1", HF_HUB_DISABLE_TELEMETRY="1", **env_overrides,
    )
    return subprocess.run([PYTHON, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def tiny_unet_feature_pipeline() -> UNetFeatureClassifierPipeline:
    """A 3-class UNetFeatureClassifierPipeline of a tiny U-Net at 16 px, seeded."""
    torch.manual_seed(0)
    head = LinearProbeHead(in_features=32, num_classes=3, block="mid_block", timestep=10, class_names=["a", "b", "c"])
    unet = UNet2DModel(**unet_config("tiny", 16))
    return UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """A tiny saved UNetFeatureClassifierPipeline, test images and its probabilities on them."""
    pipe = tiny_unet_feature_pipeline()
    folder = tmp_path_factory.mktemp("saved")
    pipe.save_pretrained(folder / "pipe")
    images = torch.rand(6, 1, 16, 16) * 2 - 1
    np.save(folder / "images.npy", images.numpy())
    return folder / "pipe", folder / "images.npy", pipe(images).probs


def folder_digest(folder) -> dict:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


# --- publishing and downloading ------------------------------------------------------------------------------------


def test_cli_push_then_download_gives_identical_predictions(stub_hub, saved_pipeline, tmp_path):
    pipe_dir, images, expected = saved_pipeline
    before = folder_digest(pipe_dir)
    unsafe = {"optimizer.pt": b"pickle", "unet/diffusion_pytorch_model.bin": b"pickle", "custom_head.py": b"1/0"}
    stub_hub.repos["org/tiny"] = dict(unsafe)  # already in the repo: the push adds to them, the download skips them
    (tmp_path / "metrics.json").write_text(json.dumps({"summary": {}, "test": {**METRICS, "confusion_matrix": [[1]]}}))
    argv = [
        "push_to_hub.py", "--model_dir", str(pipe_dir), "--repo_id", "org/tiny", "--method", "unet_features",
        "--metrics_json", str(tmp_path / "metrics.json"), "--dataset_name", "scikit-learn digits",
        "--dataset_license", "BSD-3-Clause", "--training_command", "accelerate launch examples/unet_features_train.py",
        "--evaluation_command", "python examples/evaluate.py", "--token", TOKEN, "--private", "--no-medical",
    ]
    script = f"""
import runpy, sys, numpy, torch
from diffusion_classifiers import DiffusionClassifierPipeline
sys.argv = {argv!r}
runpy.run_path("examples/push_to_hub.py", run_name="__main__")
pipe = DiffusionClassifierPipeline.from_pretrained(
    "org/tiny", revision="main", token={TOKEN!r}, cache_dir={str(tmp_path / 'cache')!r}
)
assert type(pipe).__name__ == "UNetFeatureClassifierPipeline", type(pipe)
assert pipe.name_or_path.startswith({str(tmp_path / 'cache')!r}), pipe.name_or_path
import pathlib
snapshot = pathlib.Path(pipe.name_or_path)
fetched = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
assert fetched == {sorted(name for name in set(before) | {"README.md"} if not name.endswith(".py"))!r}, fetched
local = DiffusionClassifierPipeline.from_pretrained({str(pipe_dir)!r})
images = torch.from_numpy(numpy.load({str(images)!r}))
numpy.save({str(tmp_path / 'probs.npy')!r}, numpy.stack([pipe(images).probs.numpy(), local(images).probs.numpy()]))
"""
    result = run_against(stub_hub, tmp_path, script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pushed {pipe_dir} to {stub_hub.endpoint}/org/tiny/commit/" in result.stdout
    downloaded, local = torch.from_numpy(np.load(tmp_path / "probs.npy"))
    assert torch.equal(downloaded, local)
    torch.testing.assert_close(downloaded, expected)  # computed here, with another thread count

    assert stub_hub.created == [{"name": "tiny", "organization": "org", "visibility": "private", "type": "model"}]
    uploaded = stub_hub.repos["org/tiny"]
    assert set(uploaded) == set(before) | {"README.md"} | set(unsafe)
    assert all(hashlib.sha256(uploaded[path]).hexdigest() == digest for path, digest in before.items())
    card = front_matter(uploaded["README.md"].decode())
    (card_results,) = card["model-index"][0]["results"]
    assert card["model-index"][0]["name"] == "tiny" and card["library_name"] == "diffusers"
    assert "unet_features" in card["tags"] and "medical" not in card["tags"]
    assert {m["type"]: m["value"] for m in card_results["metrics"]} == {"accuracy": 0.8125, "f1": 0.75, "roc_auc": 0.9}
    calls = [(method, path) for method, path, _ in stub_hub.requests]
    assert calls[:2] == [("POST", "/api/repos/create"), ("POST", "/api/validate-yaml")]
    assert ("POST", "/api/models/org/tiny/commit/main") in calls
    assert ("GET", "/api/models/org/tiny/revision/main") in calls
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in stub_hub.requests)
    assert folder_digest(pipe_dir) == before  # the card went up from memory, not through the local folder


def test_failed_upload_says_so_and_leaves_the_folder_unchanged(stub_hub, saved_pipeline, tmp_path):
    pipe_dir, _, _ = saved_pipeline
    before = folder_digest(pipe_dir)
    stub_hub.fail_commits = True
    (tmp_path / "README.md").write_text(str(model_card()))
    script = f"""
from huggingface_hub import ModelCard
from diffusion_classifiers.hub import HubUploadError, push_to_hub
try:
    push_to_hub({str(pipe_dir)!r}, "org/tiny", card=ModelCard.load({str(tmp_path / 'README.md')!r}), token={TOKEN!r})
except HubUploadError as err:
    print(err)
else:
    raise SystemExit("no error")
"""
    result = run_against(stub_hub, tmp_path, script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"upload of {pipe_dir} to {stub_hub.endpoint}/org/tiny failed" in result.stdout
    assert "500" in result.stdout and f"The local folder {pipe_dir} is unchanged" in result.stdout
    assert ("POST", "/api/models/org/tiny/commit/main") in [(m, p) for m, p, _ in stub_hub.requests]
    assert stub_hub.repos["org/tiny"] == {}
    assert folder_digest(pipe_dir) == before


def test_offline_push_and_download_say_so(saved_pipeline, monkeypatch, tmp_path):
    pipe_dir, _, _ = saved_pipeline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled, match="cannot push .* to the Hub: HF_HUB_OFFLINE=1 is set"):
        push_to_hub(pipe_dir, "org/tiny", card=model_card())
    with pytest.raises(FileNotFoundError, match="org/tiny: no such folder, and no Hub repo of that id .*HF_HUB_OFFLINE"):
        download("org/tiny", cache_dir=tmp_path)  # a Hub id: no folder 'org' here
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "classifier").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"^outputs/clasifier: no such folder \(outputs holds classifier\)$"):
        download("outputs/clasifier", cache_dir=tmp_path)  # QA: a mistyped relative folder was told to go online
    assert download(pipe_dir) == str(pipe_dir)
    with pytest.raises(FileNotFoundError, match="no such folder .expected a saved folder or a Hub repo id"):
        download(tmp_path / "missing" / "pipe")


@pytest.mark.parametrize("fixture", ["score_sde", "transformers_unet_features"])
def test_a_folder_saved_without_its_code_is_refused_naming_the_re_save(tmp_path, fixture):
    # QA: a v0.1.0 folder was published with a card whose snippet (trust_remote_code=True) cannot load it
    folder = REPO_ROOT / "tests" / "fixtures" / "v0.1.0" / fixture
    refused = r"saved by an earlier version, without the code .* save it again with this version first: "
    with pytest.raises(ValueError, match=refused):
        write_dry_run(folder, tmp_path / "dry")
    with pytest.raises(ValueError, match=refused):
        push_to_hub(folder, "org/tiny")  # before any network call
    assert not (tmp_path / "dry").exists()


def test_push_accepts_pipelines_and_transformers_models_only(saved_pipeline, tmp_path):
    assert library_name_of(saved_pipeline[0]) == "diffusers"
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match="expected a saved pipeline .model_index.json. or transformers model"):
        push_to_hub(tmp_path, "org/tiny")
    (tmp_path / "config.json").write_text("{}")
    assert library_name_of(tmp_path) == "transformers"


# --- what a download fetches ---------------------------------------------------------------------------------------

# Files a Hub repo may hold besides the pipeline; loading a pickle (or importing a .py) can run arbitrary code.
UNSAFE_FILES = {
    "optimizer.pt": b"pickle", "training_args.bin": b"pickle", "scaler.pkl": b"pickle", "ema/model.ckpt": b"pickle",
    "unet/diffusion_pytorch_model.bin": b"pickle", "pipeline.py": b"raise SystemExit('remote code ran')",
    "head/modeling_head.py": b"raise SystemExit('remote code ran')",
}


def fake_snapshot_download(repo_folder, calls):
    """A `snapshot_download` serving `repo_folder` as the repo: it copies into `cache_dir` exactly the files the Hub
    client would fetch, filtered by the same `filter_repo_objects`, and records its arguments."""
    from huggingface_hub.utils import filter_repo_objects

    def snapshot_download(repo_id, *, cache_dir, allow_patterns=None, ignore_patterns=None, **kwargs):
        calls.append(dict(repo_id=repo_id, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns, **kwargs))
        names = sorted(p.relative_to(repo_folder).as_posix() for p in repo_folder.rglob("*") if p.is_file())
        snapshot = Path(cache_dir) / repo_id.replace("/", "--") / "snapshot"
        for name in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo_folder / name, snapshot / name)
        return str(snapshot)

    return snapshot_download


@pytest.fixture
def repo_with_extra_files(saved_pipeline, tmp_path):
    """A folder standing for a Hub repo: the saved pipeline, a card, and pickles and Python files it must not need."""
    repo = tmp_path / "repo"
    shutil.copytree(saved_pipeline[0], repo)
    (repo / "README.md").write_text(str(model_card()))
    for name, content in UNSAFE_FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
    return repo


def test_download_asks_the_hub_for_configs_safetensors_and_cards_only(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kwargs: calls.append(kwargs) or str(tmp_path))
    assert download("org/tiny", revision="v1", token=TOKEN, cache_dir=tmp_path) == str(tmp_path)
    download("org/tiny", trust_remote_code=True)
    assert calls[0] == dict(
        revision="v1", token=TOKEN, cache_dir=tmp_path, local_files_only=False,
        allow_patterns=["*.json", "*.safetensors", "*.md"],
    )
    assert calls[1]["allow_patterns"] == ["*.json", "*.safetensors", "*.md", "*.py"]
    # A local folder is used as it is: nothing is downloaded or filtered.
    assert download(tmp_path) == str(tmp_path) and len(calls) == 2


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_pipeline_from_hub_repo_with_pickles_loads_without_fetching_them(
    repo_with_extra_files, saved_pipeline, monkeypatch, tmp_path, trust_remote_code
):
    _, images, expected = saved_pipeline
    calls = []
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download(repo_with_extra_files, calls))
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    pipe = DiffusionClassifierPipeline.from_pretrained(
        "org/tiny", cache_dir=tmp_path / "cache", revision="main", **kwargs
    )

    assert [call["repo_id"] for call in calls] == ["org/tiny"] and calls[0]["revision"] == "main"
    assert type(pipe) is UNetFeatureClassifierPipeline
    torch.testing.assert_close(pipe(torch.from_numpy(np.load(images))).probs, expected, rtol=0, atol=0)
    snapshot = Path(pipe.name_or_path)
    assert snapshot.is_relative_to(tmp_path / "cache")
    fetched = set(folder_digest(snapshot))
    python_files = {name for name in UNSAFE_FILES if name.endswith(".py")}
    saved = {name for name in folder_digest(saved_pipeline[0]) if trust_remote_code or not name.endswith(".py")}
    expected = saved | {"README.md"} | (python_files if trust_remote_code else set())
    assert fetched == expected
    assert not any(name.endswith((".pt", ".bin", ".pkl", ".ckpt")) for name in fetched)


# --- examples/push_to_hub.py without uploading ----------------------------------------------------------------------


def push_script_argv(pipe_dir, tmp_path, *extra):
    (tmp_path / "metrics.json").write_text(json.dumps({"test": METRICS}))
    return [
        "push_to_hub.py", "--model_dir", str(pipe_dir), "--repo_id", "org/tiny", "--method", "unet_features",
        "--metrics_json", str(tmp_path / "metrics.json"), "--dataset_name", "scikit-learn digits",
        "--dataset_license", "BSD-3-Clause", "--training_command", "make demo", "--evaluation_command", "make eval",
        *extra,
    ]  # fmt: skip


def run_push_script(monkeypatch, argv):
    import runpy

    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(REPO_ROOT / "examples" / "push_to_hub.py"), run_name="__main__")


def test_a_dicom_models_card_says_how_it_reads_and_restrictive_data_licences_need_a_license(monkeypatch, tmp_path):
    # QA: a CT model's card said `pipe(images)  # PIL images, arrays or tensors` and apache-2.0 for CC BY-NC-SA data
    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=["healthy", "ich"])
    UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 16, in_channels=3)), scheduler=DDPMScheduler(), head=head,
        preprocessing={"medical": {"windows": ["brain", "subdural", "bone"]}},
    ).save_pretrained(tmp_path / "ct")
    argv = push_script_argv(tmp_path / "ct", tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"))
    argv[argv.index("--dataset_license") + 1] = "CC BY-NC-SA 4.0"
    with pytest.raises(SystemExit, match=r"--license: not given, and --dataset_license 'CC BY-NC-SA 4.0' is "
                                         r"non-commercial, share-alike: the default apache-2.0 may not"):  # fmt: skip
        run_push_script(monkeypatch, argv)
    assert not (tmp_path / "card").exists()
    run_push_script(monkeypatch, argv + ["--license", "cc-by-nc-sa-4.0", "--medical"])
    card = (tmp_path / "card" / "README.md").read_text()
    assert front_matter(card)["license"] == "cc-by-nc-sa-4.0"
    assert ("The model reads every image at 16 px (stretch), 3 channels, DICOM windows ['brain', 'subdural', 'bone']. "
            "Give it its DICOM files by path, to be read through these windows as in training: image files are refused "
            "(they have no Hounsfield units to window)") in " ".join(card.split())  # QA: not "16-bit files"


@pytest.mark.parametrize("library", ["transformers", "diffusers"])
def test_a_ct_models_card_snippet_classifies_a_dicom_file_as_written(monkeypatch, tmp_path, library):
    """QA: the card of an exported 3-window CT model showed only the plain transformers `pipeline()` on `image.png`,
    which cannot open DICOM (and classified a PNG the card said was refused): its snippet now loads the package's
    pipeline class and gives a DICOM file by path, as the diffusers snippet does, and scores as the model does."""
    from diffusion_classifiers import export_unet_feature_pipeline

    from .conftest import shared_data

    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=["healthy", "ich"])
    torch.nn.init.normal_(head.linear.weight, std=3.0)
    pipe = UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 16, in_channels=3)), scheduler=DDPMScheduler(), head=head,
        preprocessing={"medical": {"windows": ["brain", "subdural", "bone"]}},
    )  # fmt: skip
    pipe.save_pretrained(tmp_path / "diffusers")
    export_unet_feature_pipeline(pipe, tmp_path / "transformers")
    argv = push_script_argv(tmp_path / library, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"))
    run_push_script(monkeypatch, argv + ["--license", "cc-by-nc-sa-4.0", "--medical"])
    card = (tmp_path / "card" / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, flags=re.DOTALL).group(1).replace("org/tiny", str(tmp_path / library))
    shutil.copy(shared_data("cq500_dicom_sample", "CQ500-CT-1", "CT000000.dcm"), tmp_path / "image.dcm")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(snippet, namespace)
    expected = pipe(["image.dcm"]).probs[0]
    if library == "transformers":
        assert "pipeline_class=diffusion_classifiers.DiffusionClassifierImageClassificationPipeline" in card
        got = {row["label"]: row["score"] for row in namespace["classifier"]("image.dcm")}
        torch.testing.assert_close(torch.tensor([got["healthy"], got["ich"]]), expected, rtol=0, atol=1e-5)
    else:  # the same weights loaded again: float32's last bits may differ between runs on some CPUs (4.8e-7, AVX-512)
        torch.testing.assert_close(namespace["out"].probs[0], expected, rtol=0, atol=1e-5)


def test_cli_dry_run_writes_the_folder_and_card_locally_without_network(saved_pipeline, monkeypatch, tmp_path, capsys):
    pipe_dir, _, _ = saved_pipeline
    before = folder_digest(pipe_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # any request would fail
    dry_run = ["--dry_run", "--output_dir", str(tmp_path / "out")]
    run_push_script(monkeypatch, push_script_argv(pipe_dir, tmp_path, *dry_run))

    assert "nothing uploaded" in capsys.readouterr().out
    written = folder_digest(tmp_path / "out")
    assert {name: digest for name, digest in written.items() if name != "README.md"} == before
    card = (tmp_path / "out" / "README.md").read_text()
    assert front_matter(card)["library_name"] == "diffusers" and "medical" not in front_matter(card)["tags"]
    assert "diagnostic" not in card  # a digits model is not medical unless --medical says so
    assert folder_digest(pipe_dir) == before
    with pytest.raises(SystemExit, match="out: expected a new or empty folder for the dry run"):
        run_push_script(monkeypatch, push_script_argv(pipe_dir, tmp_path, *dry_run))
    medical = ["--dry_run", "--medical", "--output_dir", str(tmp_path / "med")]
    run_push_script(monkeypatch, push_script_argv(pipe_dir, tmp_path, *medical))
    card = " ".join((tmp_path / "med" / "README.md").read_text().split())
    assert "not a diagnostic device" in card
    # QA (mammography): a medical model of the default windows said nothing of DICOM; its pixel_array scored far off
    assert ("DICOM files are read through each file's own window: its WindowCenter / WindowWidth and VOILUTFunction, "
            "else its VOI LUT Sequence (MONOCHROME1 inverted); 16-bit PNG / TIFF are scaled by each file's maximum, "
            "rounded up to whole bits. Give it its DICOM and 16-bit files by path") in card
    # QA: without --medical, a model trained on DICOM files says so too (its contract records dicom_files)
    import shutil

    shutil.copytree(pipe_dir, tmp_path / "dicom_model")
    index = json.loads((tmp_path / "dicom_model" / "model_index.json").read_text())
    index["preprocessing"]["medical"] = {**(index["preprocessing"].get("medical") or {}), "dicom_files": True}
    (tmp_path / "dicom_model" / "model_index.json").write_text(json.dumps(index))
    run_push_script(monkeypatch, push_script_argv(tmp_path / "dicom_model", tmp_path, "--dry_run", "--output_dir",
                                                  str(tmp_path / "dicom_card")))  # fmt: skip
    card = " ".join((tmp_path / "dicom_card" / "README.md").read_text().split())
    assert ", DICOM files through each file's own window. A file's own window is its WindowCenter" in card
    assert "Give it its DICOM and 16-bit files by path" in card and "diagnostic" not in card


def test_dry_run_publishes_data_splits_without_the_training_fingerprints(saved_pipeline, monkeypatch, tmp_path):
    """The fingerprints of the training images would let anyone holding a scan test whether the model was trained
    on it: the published data_splits.json keeps the carving only; the local record keeps them for evaluate/probe."""
    import shutil
    import warnings

    pipe_dir = tmp_path / "pipe"
    shutil.copytree(saved_pipeline[0], pipe_dir)
    record = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 3, "class_names": None}
    record["train_fingerprints"] = "ab12 cd34"
    record["selection_fingerprints"] = "ef56"  # the val images a head was chosen on: a membership test too
    (pipe_dir / "data_splits.json").write_text(json.dumps(record))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the metrics.json names no model_sha256: an earlier version's
        argv = push_script_argv(pipe_dir, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "o"))
        run_push_script(monkeypatch, argv)
    published = json.loads((tmp_path / "o" / "data_splits.json").read_text())
    assert published == {key: value for key, value in record.items() if "fingerprints" not in key}
    assert json.loads((pipe_dir / "data_splits.json").read_text()) == record  # the local folder is only read


def test_a_config_naming_a_local_folder_is_published_without_it(saved_pipeline, monkeypatch, tmp_path):
    """QA (Hub publisher): a probe's unet/config.json kept the folder its U-Net was loaded from ("_name_or_path":
    "/home/<user>/<project>/unet"), and the upload published it; a Hub id there is kept."""
    import shutil

    pipe_dir = tmp_path / "pipe"
    shutil.copytree(saved_pipeline[0], pipe_dir)
    config_path = pipe_dir / "unet" / "config.json"
    config = {**json.loads(config_path.read_text()), "_name_or_path": str(tmp_path / "lab" / "unet")}
    config_path.write_text(json.dumps(config))
    head_path = pipe_dir / "head" / "config.json"
    head = {**json.loads(head_path.read_text()), "_name_or_path": "facebook/dinov2-small"}
    head_path.write_text(json.dumps(head))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    write_dry_run(pipe_dir, tmp_path / "out")
    published = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    assert published == {key: value for key, value in config.items() if key != "_name_or_path"}
    assert json.loads((tmp_path / "out" / "head" / "config.json").read_text()) == head
    assert json.loads(config_path.read_text()) == config  # the local folder is only read


def test_a_repo_id_the_hub_would_refuse_is_refused_before_the_card(saved_pipeline, monkeypatch, tmp_path, capsys):
    """QA (Hub publisher): "my org/bad name!!" went into a dry run's card, its title and usage snippet."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = push_script_argv(saved_pipeline[0], tmp_path, "--dry_run", "--output_dir", str(tmp_path / "out"))
    argv[argv.index("--repo_id") + 1] = "my org/bad name!!"
    with pytest.raises(SystemExit):
        run_push_script(monkeypatch, argv)
    assert "--repo_id: repo_id 'my org/bad name!!': Repo id must" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="repo_id 'a/b/c'"):
        push_to_hub(saved_pipeline[0], "a/b/c")


def test_cli_offline_push_fails_with_one_line(saved_pipeline, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as exit_info:
        run_push_script(monkeypatch, push_script_argv(saved_pipeline[0], tmp_path))
    message = str(exit_info.value.code)
    assert message.startswith("push_to_hub.py: cannot push") and "HF_HUB_OFFLINE=1 is set" in message
    assert "\n" not in message


@pytest.mark.slow
def test_cli_failed_upload_fails_with_one_line_not_a_traceback(stub_hub, saved_pipeline, tmp_path):
    stub_hub.fail_commits = True
    argv = push_script_argv(saved_pipeline[0], tmp_path, "--token", TOKEN)
    script = f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path('examples/push_to_hub.py', run_name='__main__')"
    result = run_against(stub_hub, tmp_path, script)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"push_to_hub.py: upload of {saved_pipeline[0]} to {stub_hub.endpoint}/org/tiny failed")
    assert last.endswith(f"The local folder {saved_pipeline[0]} is unchanged.")




@pytest.mark.slow
def test_pushed_pipeline_loads_from_the_hub_with_diffusers_alone(stub_hub, saved_pipeline, tmp_path):
    pipe_dir, images, expected = saved_pipeline
    stub_hub.repos["org/tiny"] = {name: (pipe_dir / name).read_bytes() for name in folder_digest(pipe_dir)}
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_PACKAGE)
    script = f"""
import numpy, torch
from diffusers import DiffusionPipeline
{PACKAGE_HIDDEN}
pipe = DiffusionPipeline.from_pretrained("org/tiny", trust_remote_code=True, cache_dir={str(tmp_path / 'cache')!r})
assert type(pipe).__module__.startswith("diffusers_modules."), type(pipe).__module__
numpy.save({str(tmp_path / 'probs.npy')!r}, pipe(torch.from_numpy(numpy.load({str(images)!r}))).probs.numpy())
"""
    result = run_against(stub_hub, tmp_path, script, PYTHONPATH=str(tmp_path / "hide"))
    assert result.returncode == 0, result.stderr[-3000:]
    # the same code on the same inputs in another process (see tests/test_ecosystem_loading.py: assert_same_numbers)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "probs.npy")), expected, rtol=1e-4, atol=1e-5)


def test_uploads_leave_out_pickles_and_checkpoints_and_name_them(saved_pipeline, monkeypatch, tmp_path):
    """A folder written by transformers' `Trainer.save_model` holds `training_args.bin`, a pickle: neither the upload
    nor the dry run carries it (nor any other pickle); a warning names what was left out. So are the checkpoint
    folders a training run writes beside its model (QA: a dry run of a training output carried two of them)."""
    folder = tmp_path / "model"
    shutil.copytree(saved_pipeline[0], folder)
    pickles = ["ema/model.ckpt", "optimizer.pt", "scaler.pkl", "training_args.bin", "unet/weights.pth"]
    for name in pickles + ["checkpoint-150/model.safetensors", "checkpoint-300/training_run.json", "unet/checkpoint-5/x.json"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"pickle")
    expected = set(folder_digest(saved_pipeline[0])) | {"README.md"}

    with pytest.warns(UserWarning) as warned:
        hub.write_dry_run(folder, tmp_path / "dry", card=model_card())
    messages = [str(warning.message) for warning in warned]
    assert any(re.search(r"not uploading the pickle file\(s\) " + re.escape(", ".join(pickles)), m) for m in messages)
    checkpoints = "checkpoint-150, checkpoint-300, unet/checkpoint-5"
    assert any(f"not uploading the training checkpoint folder(s) {checkpoints} (" in m for m in messages)
    assert set(folder_digest(tmp_path / "dry")) == expected

    commits = []

    class RecordingApi:
        endpoint = "stub"

        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            pass

        def create_commit(self, repo_id, operations, **kwargs):
            commits.append({operation.path_in_repo for operation in operations})

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    with pytest.warns(UserWarning, match="training_args.bin"):
        push_to_hub(folder, "org/tiny", card=model_card())
    assert commits == [expected]


def test_card_usage_snippet_runs_and_never_loads_pickled_weights(saved_pipeline, tmp_path, monkeypatch):
    """The card's snippet, run as written on a saved folder (it reads `image.png`), loads it; on a folder whose U-Net
    weights are only a pickle (`diffusion_pytorch_model.bin`), diffusers' generic loader would fall back to it: the
    snippet refuses it."""
    from PIL import Image

    pipe_dir, images, _ = saved_pipeline
    first = torch.from_numpy(np.load(images))[0, 0]
    monkeypatch.chdir(tmp_path)
    Image.fromarray(((first + 1) * 127.5).round().to(torch.uint8).numpy(), mode="L").save("image.png")
    expected = UNetFeatureClassifierPipeline.from_pretrained(pipe_dir)(["image.png"]).probs
    pickled = tmp_path / "pickled"
    shutil.copytree(pipe_dir, pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    for folder in (pipe_dir, pickled):
        card = str(model_card(repo_id=str(folder)))
        snippet = re.search(r"```python\n(.*?)```", card, flags=re.DOTALL).group(1)
        namespace = {}
        if folder == pickled:
            with pytest.raises(OSError, match="no file named diffusion_pytorch_model.safetensors"):
                exec(snippet, namespace)
        else:
            exec(snippet, namespace)
            torch.testing.assert_close(namespace["out"].probs, expected, rtol=0, atol=0)


def test_cli_card_names_the_split_its_metrics_file_records(saved_pipeline, monkeypatch, tmp_path):
    """Validation metrics were published as the test split's: the card now names the split metrics.json records, a
    contradicting --dataset_split is refused naming both, and a file that records none needs --dataset_split."""
    pipe_dir, _, _ = saved_pipeline

    def publish(name, metrics, *extra):
        argv = push_script_argv(pipe_dir, tmp_path, "--dry_run", "--output_dir", str(tmp_path / name), *extra)
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
        run_push_script(monkeypatch, argv)
        return (tmp_path / name / "README.md").read_text()

    for name, metrics, extra, split in (
        ("val", {"split": "val", **METRICS}, [], "val"),
        ("validation", {"split": "val", **METRICS}, ["--dataset_split", "validation"], "validation"),
        ("demo", {"test": METRICS}, [], "test"),
        ("flat", METRICS, ["--dataset_split", "val"], "val"),
    ):
        card = publish(name, metrics, *extra)
        assert front_matter(card)["model-index"][0]["results"][0]["dataset"]["split"] == split, name
        assert f"Results on the `{split}` split" in card and f"come from one split (`{split}`)" in card, name
    with pytest.raises(SystemExit, match=r"--dataset_split 'test' contradicts .*metrics.json, whose metrics were "
                       r"measured on the 'val' split"):
        publish("contradiction", {"split": "val", **METRICS}, "--dataset_split", "test")
    with pytest.raises(SystemExit, match="metrics.json does not record the split .*; pass --dataset_split"):
        publish("unrecorded", METRICS)
    assert not (tmp_path / "contradiction").exists() and not (tmp_path / "unrecorded").exists()


def test_cli_card_is_the_folders_method_and_lists_its_labels(saved_pipeline, monkeypatch, tmp_path):
    """--method score_sde on a U-Net-feature folder gave it the Score-SDE card: the method is now read from the folder
    (--method may be left out) and a contradicting one is refused; the card lists the labels and, for a binary model,
    names the positive class its sensitivity and specificity take."""
    pipe_dir, _, _ = saved_pipeline
    argv = push_script_argv(pipe_dir, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "inferred"))
    without_method = argv[:5] + argv[7:]
    assert argv[5:7] == ["--method", "unet_features"] and "--method" not in without_method
    run_push_script(monkeypatch, without_method)
    card = (tmp_path / "inferred" / "README.md").read_text()
    assert "unet_features" in front_matter(card)["tags"] and "frozen DDPM U-Net features" in card
    assert "Labels (in label-id order): `a`, `b`, `c`." in card and "positive class" not in card
    wrong = argv[:6] + ["score_sde"] + argv[7:-1] + [str(tmp_path / "wrong")]
    with pytest.raises(SystemExit, match=r"--method 'score_sde' contradicts .*, a 'unet_features' model"):
        run_push_script(monkeypatch, wrong)
    assert not (tmp_path / "wrong").exists()

    binary = write_json(tmp_path / "binary" / "config.json", {
        "model_type": "diffusion-classifier", "backbone_type": "encoder", "id2label": {"0": "normal", "1": "pneumonia"},
        "positive_class": "pneumonia", "auto_map": {"AutoModelForImageClassification": "modeling.Model"},
    })  # fmt: skip
    argv = push_script_argv(binary, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "binary-card"))
    (tmp_path / "metrics.json").write_text(json.dumps({"split": "test", "sensitivity": 0.9, "specificity": 0.8}))
    run_push_script(monkeypatch, argv[:5] + argv[7:])
    card = (tmp_path / "binary-card" / "README.md").read_text()
    assert "rc_dit" in front_matter(card)["tags"] and "Labels (in label-id order): `normal`, `pneumonia`." in card
    # at its operating point, as report.md states it (QA: a publishing lab's card named none)
    assert ("Sensitivity and specificity take **pneumonia** as the positive class, predicted where its probability "
            "exceeds 0.5 (each image is given its most probable class).") in card  # fmt: skip
    # the metrics' own positive class (evaluate --positive_class normal) is the one their numbers refer to
    (tmp_path / "metrics.json").write_text(json.dumps({"split": "test", "sensitivity": 0.8, "positive_class": "normal"}))
    run_push_script(monkeypatch, argv[:5] + argv[7:-1] + [str(tmp_path / "normal-card")])
    assert "take **normal** as the positive class" in (tmp_path / "normal-card" / "README.md").read_text()
    # the head the figures were measured with, as fit-head's report.md states it (QA: the card named all three)
    head = "prototypes on 10 labelled images (5 per class, drawn with seed 0); softmax temperature 2.95 chosen on val"
    (tmp_path / "metrics.json").write_text(json.dumps({"split": "test", "accuracy": 0.5, "head": {"summary": head}}))
    run_push_script(monkeypatch, argv[:5] + argv[7:-1] + [str(tmp_path / "head-card")])
    card = (tmp_path / "head-card" / "README.md").read_text()
    assert f"\n\nHead: {head}.\n" in card and card.index("Results on the `test` split") < card.index("Head: ")
    assert "Head: " not in (tmp_path / "normal-card" / "README.md").read_text()
    with pytest.raises(ValueError, match=r"positive_class: expected one of the class names \['a', 'b', 'c'\], got 'cat'"):
        model_card(positive_class="cat")


def test_a_card_publishes_only_its_own_models_metrics_truthfully(saved_pipeline, monkeypatch, tmp_path):
    """QA: --metrics_json of model B published B's AUC on model A's card; the card claimed a public research dataset
    and class pruning whatever the data and method; it did not say how many images the metrics came from."""
    from diffusion_classifiers.evaluation import evaluate_classifier

    pipe_dir, images, _ = saved_pipeline
    from diffusion_classifiers.data import LabeledImages

    data = LabeledImages(torch.as_tensor(np.load(images)), torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"])
    evaluate_classifier(str(pipe_dir), data, tmp_path / "eval", split="test")
    recorded = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert recorded["model_sha256"] == hub.model_fingerprint(pipe_dir) and recorded["num_samples"] == 6
    argv = push_script_argv(pipe_dir, tmp_path, "--dry_run", "--medical", "--output_dir", str(tmp_path / "own"))
    argv[argv.index("--metrics_json") + 1] = str(tmp_path / "eval" / "metrics.json")
    run_push_script(monkeypatch, argv)
    card = (tmp_path / "own" / "README.md").read_text()
    assert "one public\nresearch dataset" not in card and "measured on scikit-learn digits\nonly" in card
    assert "split of scikit-learn digits (6 images):" in card
    assert "| class | precision | recall | F1 | support |" in card and "\n| a | " in card  # the per-class table
    other = tmp_path / "other"  # another model: the same files, other weights
    shutil.copytree(pipe_dir, other)
    weights = next(other.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    argv = push_script_argv(other, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "wrong"))
    argv[argv.index("--metrics_json") + 1] = str(tmp_path / "eval" / "metrics.json")
    with pytest.raises(SystemExit, match=r"metrics.json was measured on another model .* than .*other"):
        run_push_script(monkeypatch, argv)
    with pytest.warns(UserWarning, match="does not record which model it was measured on"):  # an earlier metrics.json
        run_push_script(monkeypatch, push_script_argv(pipe_dir, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "old")))
    # Score-SDE: pruning is claimed only where it was used, on more than two classes; binary cards count positives
    common = dict(model_name="m", dataset_name="in-house", dataset_license="private", metrics={"accuracy": 0.9},
                  training_command="t", evaluation_command="e")  # fmt: skip
    plain = str(hub.render_model_card("score_sde", class_names=["a", "b"], **common))
    assert "pruned early" not in plain
    assert "pruned early" in str(hub.render_model_card("score_sde", class_names=["a", "b", "c"], pruning=True, **common))
    binary = str(hub.render_model_card("score_sde", class_names=["n", "m"], positive_class="m", num_images=10, num_positives=2, **common))
    assert "(10 images, 2 of them m):" in binary and "standard errors" not in binary
    sensitivity = {"num_stderr": 2.0, "decisions_within": 3, "fraction_within": 0.3, "accuracy_beyond": 0.875, "median_stderr": 1.2}
    flagged = str(hub.render_model_card("score_sde", class_names=["n", "m"], seed_sensitivity=sensitivity, num_images=10, **common))
    assert " ".join(flagged.split()).count(
        "On the `test` split, 3 of 10 decisions (30.0%) were within 2 Monte-Carlo standard errors of the decision threshold: "
        "another noise seed could flip them; the others were 87.5% accurate."
    ) == 1  # fmt: skip


def test_the_card_scores_as_its_metrics_were_scored(monkeypatch, tmp_path):
    """QA: metrics.json recorded num_timesteps=20 but the card's snippet, `pipe(images)`, scores with the default 100:
    the card now passes the settings that differ from the defaults and names them beside its results."""
    model = tmp_path / "score_sde"  # a binary Score-SDE pipeline, saved with its code
    DiffusionClassifierPipeline.from_pretrained(REPO_ROOT / "tests" / "fixtures" / "v0.1.0" / "score_sde").save_pretrained(model)
    metrics = {"accuracy": 0.9, "split": "test", "num_samples": 8, "model_sha256": hub.model_fingerprint(model),
               "pipeline_call": {"method": "elbo", "num_timesteps": 20, "seed": 0, "weighting": "uniform"},
               "seed_sensitivity": {"num_stderr": 2.0, "decisions_within": 2, "fraction_within": 0.25,
                                    "accuracy_beyond": 1.0, "median_stderr": 3.0}}  # fmt: skip
    argv = push_script_argv(model, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"))
    argv[argv.index("--method") : argv.index("--method") + 2] = []
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))  # push_script_argv wrote its own
    run_push_script(monkeypatch, argv)
    card = (tmp_path / "card" / "README.md").read_text()
    assert "out = pipe(images, num_timesteps=20, weighting='uniform')\n" in card
    assert "(8 images), scored with `pipe(images, num_timesteps=20, weighting='uniform')`:" in card
    assert "On the `test` split, 2 of 8 decisions (25.0%) were within 2 Monte-Carlo" in " ".join(card.split())
    (tmp_path / "demo.json").write_text(json.dumps({"test": metrics}))  # the demo's layout
    assert hub.load_eval_seed_sensitivity(tmp_path / "demo.json") == metrics["seed_sensitivity"]
    plain = str(hub.render_model_card("score_sde", model_name="m", dataset_name="d", dataset_license="l",
                                      metrics={"accuracy": 0.9}, training_command="t", evaluation_command="e"))  # fmt: skip
    assert "out = pipe(images)\n" in plain and "scored with" not in plain


def test_a_card_of_train_split_metrics_is_refused(saved_pipeline, monkeypatch, tmp_path):
    """QA: `evaluate --split train` then the push script published the head's own training images' accuracy."""
    argv = push_script_argv(saved_pipeline[0], tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"))
    (tmp_path / "metrics.json").write_text(json.dumps({"split": "train", **METRICS}))
    with pytest.raises(SystemExit, match="measured on the train split, the images the model was fitted on"):
        run_push_script(monkeypatch, argv)
    assert not (tmp_path / "card").exists()


def test_the_card_counts_the_training_images_dropped(tmp_path):
    """QA: `evaluate --drop_training_images` recorded the dropped images in metrics.json only: the card said "38
    images"."""
    (tmp_path / "metrics.json").write_text(json.dumps({
        "accuracy": 0.5, "num_samples": 38, "positive_class": "malignant", "num_positives": 20,
        "training_images_dropped": 35,
    }))  # fmt: skip
    counts = hub.load_eval_counts(tmp_path / "metrics.json")
    assert counts == {"num_images": 38, "num_positives": 20, "num_dropped": 35, "training_images_unchecked": False,
                      "num_selection_images": None, "num_training_copies": None}  # fmt: skip
    common = dict(model_name="m", dataset_name="mammo", dataset_license="private", metrics={"accuracy": 0.5},
                  training_command="t", evaluation_command="e", class_names=["benign", "malignant"])  # fmt: skip
    card = str(hub.render_model_card("score_sde", positive_class="malignant", **counts, **common))
    assert "(38 images, 20 of them malignant: the split's 73 less the 35 the model was trained on):" in card
    plain = str(hub.render_model_card("score_sde", positive_class="malignant", num_images=38, num_positives=20,
                                      **common))  # fmt: skip
    assert "(38 images, 20 of them malignant):" in plain


def test_a_card_of_a_whole_data_set_that_held_training_images_says_its_val_images_may_be_among_those_scored():
    """QA (a publishing lab): `evaluate --split all --drop_training_images` on the training data scored its val and
    test splits together (val chose the model: 95.8% there, 85.3% on test, 90.1% pooled), and the card gave the pooled
    figure as a held-out one."""
    common = dict(model_name="m", dataset_name="PneumoniaMNIST", dataset_license="cc-by-4.0", metrics={"accuracy": 0.9},
                  training_command="t", evaluation_command="e", class_names=["normal", "pneumonia"])  # fmt: skip
    pooled = str(hub.render_model_card("unet_features", dataset_split="all", eval_dataset_name="pneumoniamnist.npz",
                                       num_images=1140, num_dropped=4716, **common))  # fmt: skip
    held = "**The data set held 4716 images the model was trained on** (left out above): if it is the model's own"
    assert held in pooled and "these figures are optimistic" in " ".join(pooled.split())
    external = str(hub.render_model_card("unet_features", dataset_split="all", eval_dataset_name="site_b",
                                         num_images=300, **common))  # fmt: skip
    assert "The data set held" not in external and "every image of site_b, none carved out" in external


def test_the_card_says_its_figures_were_not_checked_against_the_training_images_as_the_report_does(tmp_path):
    """QA (a reviewer of an upgraded model): report.md said "Not checked against the model's training images"; the
    card of the same metrics said nothing."""
    common = dict(model_name="m", dataset_name="digits", dataset_license="bsd-3-clause", metrics={"accuracy": 0.5},
                  training_command="t", evaluation_command="e", class_names=["zero", "one"])  # fmt: skip
    cards = {}
    for checked in (False, True):
        metrics = {"accuracy": 0.5, "num_samples": 6, "training_images_checked": checked}
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
        counts = hub.load_eval_counts(tmp_path / "metrics.json")
        cards[checked] = str(hub.render_model_card("unet_features", **counts, **common))
    unchecked = "**Not checked against the model's training images** (the model records none, or only its head's, or"
    assert unchecked in cards[False] and "Not checked" not in cards[True]
    card = cards[False]
    assert card.index("Results on the `test` split") < card.index(unchecked) < card.index("| metric")


# --- per-class metrics on the card ----------------------------------------------------------------------------------


def per_class_metrics(num_classes: int, absent: int = 0) -> dict:
    """An `evaluate`-shaped metrics.json (`classification_metrics`) of `num_classes` classes, the last `absent` of them
    without an image: a long tail, every third image of class k mistaken for class k+1."""
    from diffusion_classifiers.metrics import classification_metrics

    sizes = [max(1, 30 // (k + 1)) if k < num_classes - absent else 0 for k in range(num_classes)]
    y_true = np.repeat(np.arange(num_classes), sizes)
    y_pred = np.where(np.arange(len(y_true)) % 3 == 0, (y_true + 1) % num_classes, y_true)
    names = [f"class_{k:02d}" for k in range(num_classes)]
    return {"split": "test", **classification_metrics(y_true, y_pred, num_classes=num_classes, class_names=names)}


@pytest.mark.parametrize("method", METHODS)
def test_the_card_shows_the_per_class_table_as_evaluates_report_does(method, tmp_path):
    """A plankton lab (121 classes, most rare): the card's accuracy hid that the rare classes fail; it now carries the
    per-class precision, recall, F1 and support of metrics.json, formatted as the report formats them; the model index
    keeps its shape."""
    from diffusion_classifiers.evaluation import render_evaluation_report

    metrics = per_class_metrics(3)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "demo.json").write_text(json.dumps({"summary": {}, "test": metrics}))
    per_class = hub.load_eval_per_class(tmp_path / "metrics.json")
    assert per_class == metrics["per_class"] == hub.load_eval_per_class(tmp_path / "demo.json")
    card = str(model_card(method, per_class=per_class))
    assert metrics["per_class"]["class_02"]["f1"] == pytest.approx(4 / 7)  # 6 of 10 found, 6 of 11 predicted right
    assert "| class_02 | 54.55% | 60.00% | 57.14% | 10 |" in card
    report = render_evaluation_report({**metrics, "calibration": {"ece": 0.0}}, "t", [])
    table = "\n".join(line for line in report.splitlines() if line.startswith("| class_"))
    assert "Per class:\n\n| class | precision | recall | F1 | support |\n" in card and table in card
    assert card.index("| Accuracy |") < card.index("| class_00 |") < card.index("Reproduce them with")
    assert "<details>" not in card and "had no image" not in card
    assert front_matter(card) == front_matter(str(model_card(method)))  # the model index: unchanged


def test_a_card_from_an_earlier_metrics_json_without_per_class_renders(tmp_path):
    """metrics.json of earlier versions (flat, or the demo's under "test") records no "per_class": no table, no
    crash."""
    for name, data in (("flat", {"split": "test", **METRICS}), ("demo", {"summary": {}, "test": METRICS})):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        assert hub.load_eval_per_class(tmp_path / f"{name}.json") is None
        card = str(model_card(per_class=hub.load_eval_per_class(tmp_path / f"{name}.json")))
        assert "| Accuracy | 0.8125 |" in card and "| class |" not in card and "Per class" not in card
    with pytest.raises(ValueError, match=r"per_class: expected \['f1', 'precision', 'recall', 'support'\] for every "
                       "class, not for b"):  # fmt: skip
        model_card(per_class={"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}, "b": {"f1": 0.5}})


def test_a_card_of_many_classes_collapses_its_per_class_table_and_counts_the_classes_without_images():
    """More than `PER_CLASS_OPEN_MAX` (20) classes: the table is in a collapsed <details> block (the Hub renders it),
    in the order metrics.json lists the classes; the classes without a test image are counted outside it."""
    metrics = per_class_metrics(25, absent=2)
    card = str(model_card(per_class=metrics["per_class"], class_names=None))
    start = "<details>\n<summary>Per-class metrics (25 classes)</summary>\n\n| class | precision | recall | F1 |"
    assert card.count(start) == 1 and card.count("\n</details>\n") == 1
    rows = [line.split(" | ")[0][2:] for line in card.splitlines() if line.startswith("| class_")]
    assert rows == list(metrics["per_class"])
    assert "| class_24 | n/a | n/a | n/a | 0 |" in card  # no image, none predicted either
    outside = card.split("</details>")[1]
    assert "2 of the 25 classes had no image in the `test` split (support 0):" in outside
    # QA (a plankton lab): the headline figures said nothing of it, only the end of the collapsed table did
    above = "**2 of the 25 classes had no image here**: balanced accuracy and macro F1 (and their intervals) average "
    assert card.index(above + "over the other 23 only.") < card.index("| Accuracy |")
    assert "Per class:" not in card
    twenty = str(model_card(per_class=per_class_metrics(hub.PER_CLASS_OPEN_MAX)["per_class"], class_names=None))
    assert "<details>" not in twenty and "Per class:" in twenty and "| class_19 |" in twenty


def test_a_card_credits_the_data_says_an_unlabeled_pool_and_an_external_set(saved_pipeline, monkeypatch, tmp_path):
    """QA (a head-CT group): the card could not cite the data as its providers ask, nor say that the diffusion model
    was trained on an unlabeled pool; and metrics of `evaluate --split all` read as "the `all` split"."""
    from diffusion_classifiers.data.split_record import save_split_record

    pipe_dir, _, _ = saved_pipeline
    pool_model = tmp_path / "pool_model"
    shutil.copytree(pipe_dir, pool_model)
    save_split_record(pool_model, 0.1, 0.2, 0, None, unlabeled=True)
    (tmp_path / "data.bib").write_text("@article{cq500,\n  title = {Deep learning algorithms for head CT}\n}\n")
    argv = push_script_argv(pool_model, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "out"),
                            "--dataset_citation", str(tmp_path / "data.bib"))  # fmt: skip
    run_push_script(monkeypatch, argv)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "```\n@article{cq500,\n  title = {Deep learning algorithms for head CT}\n}\n```" in card
    assert "trained without labels on every image of an unlabeled folder" in " ".join(card.split())
    plain = str(model_card())
    assert "unlabeled folder" not in plain and "Cite the data" not in plain
    # QA (plankton lab): an external set's results were credited to the training data, in the model index too
    argv = push_script_argv(pool_model, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "ext"))
    (tmp_path / "metrics.json").write_text(json.dumps({"split": "all", "dataset": "flowcam", **METRICS}))
    with pytest.raises(SystemExit, match=r"scores every image of a data set .* could not check them against the "):
        run_push_script(monkeypatch, argv)  # review: figures that may include training images, unsaid
    checked = {"split": "all", "dataset": "flowcam", "training_images_checked": True, **METRICS}
    (tmp_path / "metrics.json").write_text(json.dumps(checked))
    run_push_script(monkeypatch, argv)
    external = (tmp_path / "ext" / "README.md").read_text()
    assert "Results on every image of flowcam, none carved out" in external
    assert "Trained on scikit-learn digits and evaluated on flowcam only" in " ".join(external.split())
    assert "name: flowcam" in external.split("---")[1] and "split: all" in external.split("---")[1]
    dropped = " ".join(str(model_card(dataset_split="all", num_images=30, num_dropped=5)).split())
    assert "Results on the images of scikit-learn digits the model was not trained on (30 images: the data set's 35 " \
        "less the 5 the model was trained on)" in dropped


def test_a_card_of_aggregated_metrics_counts_the_studies_and_their_rule(monkeypatch, tmp_path):
    """QA (a head-CT group): a card of aggregate's metrics.json said "(6 images, 3 of them bleed)" of 6 studies scored
    by the max rule over their slices, and warned that the file recorded no model (and needed --dataset_split)."""
    import warnings

    from diffusion_classifiers.cli import main
    from diffusion_classifiers.prediction.outputs import write_csv

    model = tmp_path / "ct"
    classes = ["normal", "bleed"]
    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=classes)
    UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head
    ).save_pretrained(model)
    # two slices a study; the first three studies bleed, the last reads bleed on one slice (0.6)
    bleed = [0.9, 0.2, 0.7, 0.1, 0.3, 0.8, 0.1, 0.4, 0.2, 0.3, 0.6, 0.1]
    columns = ["path", "frame", "true_label", "study_uid", "label", "score", "prob_normal", "prob_bleed"]
    rows = [[f"{i}.dcm", 0, "bleed" if i < 6 else "normal", f"s{i // 2}", "bleed" if p >= 0.5 else "normal",
             max(p, 1 - p), 1 - p, p] for i, p in enumerate(bleed)]  # fmt: skip
    write_csv(tmp_path / "p.csv", columns, rows)
    run = {"model_dir": str(model), "model_sha256": hub.model_fingerprint(model), "split": "test",
           "positive_class": "bleed"}  # fmt: skip
    (tmp_path / "p.csv.json").write_text(json.dumps({"run": run, "class_names": classes, "columns": columns}))
    main(["aggregate", "--predictions", str(tmp_path / "p.csv")])
    argv = push_script_argv(model, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"))
    argv[argv.index("--metrics_json") + 1] = str(tmp_path / "p.max_by_study_uid.metrics.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_push_script(monkeypatch, argv)  # no --dataset_split: the split predict recorded
    assert not [str(w.message) for w in caught if "does not record which model" in str(w.message)]
    card = (tmp_path / "card" / "README.md").read_text()
    assert ("Results on the `test` split of scikit-learn digits (6 studies by study_uid of 12 images, each bleed if "
            "any of its images' probability of bleed is 0.5 or more (max rule), 3 of them bleed):") in card
    assert "6 images" not in card
    results = front_matter(card)["model-index"][0]["results"]
    assert {result["dataset"]["split"] for result in results} == {"test"}
    accuracy = {"type": "accuracy", "value": pytest.approx(5 / 6), "name": "Accuracy"}
    assert accuracy in [result["metrics"][0] for result in results]
    mean = {"grouped_by": ["study_uid", "laterality"], "rule": "mean", "threshold": None, "num_images": None}
    card = str(model_card(num_images=4, grouping=mean))
    rule = "each labelled by its images' mean class probabilities (mean rule)"
    assert f"(4 groups by study_uid + laterality, {rule}):" in card


def test_the_cards_label_list_keeps_names_with_commas_and_spaces_whole():
    """QA (session 58, an international lab): "a,b" joined with ", " read as two labels, a trailing space vanished."""
    card = str(render_model_card(
        "unet_features", model_name="tiny", repo_id="lab/tiny", dataset_name="digits", dataset_license="BSD-3-Clause",
        metrics={"accuracy": 0.5}, class_names=["a,b", "trailing ", "カイアシ類"], training_command="make demo",
        evaluation_command="make eval",
    ))  # fmt: skip
    assert "Labels (in label-id order): `a,b`, `trailing `, `カイアシ類`." in card


def test_a_metrics_json_that_is_no_json_object_is_refused_naming_it(saved_pipeline, tmp_path, monkeypatch):
    """QA (a bad-input sweep): `--metrics_json` given a CSV printed only "Expecting value: line 1 column 1 (char 0)"."""
    pipe_dir, _, _ = saved_pipeline
    argv = push_script_argv(pipe_dir, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "out"))
    (tmp_path / "metrics.json").write_text("path,label\n")
    not_json = r"metrics.json: not valid JSON \(Expecting value.*\); expected the metrics.json"
    with pytest.raises(SystemExit, match=not_json):
        run_push_script(monkeypatch, argv)
    (tmp_path / "metrics.json").write_text("[0.9]")
    with pytest.raises(SystemExit, match=r"metrics.json: a JSON list; expected the metrics.json evaluate or demo"):
        run_push_script(monkeypatch, argv)
    assert not (tmp_path / "out").exists()


def test_a_dry_run_into_a_folder_it_cannot_write_is_refused_naming_it(saved_pipeline, tmp_path):
    """QA (operations): a dry run into a read-only mount ended in a traceback of its staging folder's mkdir; here the
    folder is under a file, which root cannot write into either."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=r"--output_dir '.*a-file/dry': its folder '.*a-file': expected a writable "):
        write_dry_run(saved_pipeline[0], tmp_path / "a-file" / "dry")


def test_a_dry_run_into_an_empty_folder_stages_inside_it(saved_pipeline, tmp_path, monkeypatch):
    """Review: staged beside it, an empty writable folder whose parent is read-only (a container's mount) was refused
    for its parent."""
    (tmp_path / "out").mkdir()
    parent_checked = []
    original = hub.check_writable_dir
    monkeypatch.setattr(hub, "check_writable_dir", lambda path, name: (parent_checked.append(str(path)),
                                                                       original(path, name)))  # fmt: skip
    write_dry_run(saved_pipeline[0], tmp_path / "out")
    assert parent_checked == [str((tmp_path / "out").resolve())]
    assert (tmp_path / "out" / "model_index.json").is_file()
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".dry-run")]
