"""Security promises, checked on the source and on what rlft writes.

* weights are written as safetensors only; any `torch.load` passes `weights_only=True`; no pickle loads;
* YAML is read with a safe loader only (`yaml.safe_load` or a `yaml.SafeLoader` subclass);
* `trust_remote_code` is False unless a config sets it, and reaches transformers only from the config;
* env (and, later, reward) entry points are imported only by the env factory, from config keys;
* nothing reaches a shell: no `shell=True`, `os.system`, `os.popen`, `eval` or `exec`;
* bandit finds nothing of high severity (the CI runs the same command, .ci/run).

The source checks are an AST scanner (`scan`); `BAD_SNIPPETS` proves each of its rules fires, `GOOD_SNIPPETS`
that the allowed forms pass.
"""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("rlft", "envs")

# Findings that are not what they look like, by (file, rule), each with the reason.
ALLOWED = {
    (
        "rlft/rollout/env_factory.py",
        "dynamic-import",
    ): "the env factory imports the 'module:attribute' entry points a config names (env.id, env.adapter.*); "
    "the only place config strings become code",
    (
        "rlft/algorithms/checkpointing.py",
        "torch-save",
    ): "the rollout buffer of a resumable trainer checkpoint: tensors of episodes, not weights, read back with "
    "torch.load(weights_only=True)",
}

SAFE_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}
UNSAFE_YAML_NAMES = {
    f"yaml.{n}"
    for n in (
        "Loader",
        "UnsafeLoader",
        "FullLoader",
        "CLoader",
        "CUnsafeLoader",
        "CFullLoader",
        "Constructor",
        "UnsafeConstructor",
        "FullConstructor",
    )
}
UNSAFE_YAML_CALLS = {f"yaml.{n}" for n in ("unsafe_load", "unsafe_load_all", "full_load", "full_load_all")}
PICKLE_LOADS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "numpy.load",
}
SHELL_CALLS = {
    "os.system",
    "os.popen",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "pty.spawn",
    "asyncio.create_subprocess_shell",
}
DYNAMIC_IMPORTS = {
    "importlib.import_module",
    "__import__",
    "importlib.__import__",
    "importlib.util.spec_from_file_location",
    "importlib.machinery.SourceFileLoader",
    "importlib.metadata.entry_points",
    "runpy.run_path",
    "runpy.run_module",
}


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    text: str


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


class _Scanner(ast.NodeVisitor):
    def __init__(self, tree: ast.Module) -> None:
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> dotted name it was imported as
        self.params: list[dict[str, ast.AST | None]] = []  # enclosing functions' parameters -> default
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.aliases[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0]
                    )
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        # Classes that subclass a safe loader (transitively) are safe loaders.
        self.safe_loaders = set(SAFE_LOADERS)
        classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        changed = True
        while changed:
            changed = False
            for cls in classes:
                if cls.name not in self.safe_loaders and any(
                    self.qualname(b) in self.safe_loaders for b in cls.bases
                ):
                    self.safe_loaders.add(cls.name)
                    changed = True

    def qualname(self, node: ast.AST) -> str | None:
        """`yaml.load`, `torch.load`, ... for a Name or Attribute chain, through import aliases."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def add(self, rule: str, node: ast.AST, text: str) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 0), text))

    # ------------------------------------------------------------------ functions: trust_remote_code defaults
    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        args = node.args
        positional = args.posonlyargs + args.args
        defaults: dict[str, ast.AST | None] = {a.arg: None for a in positional + args.kwonlyargs}
        for a, d in zip(positional[len(positional) - len(args.defaults) :], args.defaults):
            defaults[a.arg] = d
        for a, d in zip(args.kwonlyargs, args.kw_defaults):
            defaults[a.arg] = d
        if (
            "trust_remote_code" in defaults
            and defaults["trust_remote_code"] is not None
            and not _is_const(defaults["trust_remote_code"], False)
        ):
            self.add("trust-remote-code", node, f"{node.name}(trust_remote_code=...) must default to False")
        self.params.append(defaults)
        self.generic_visit(node)
        self.params.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_AnnAssign(
        self, node: ast.AnnAssign
    ) -> None:  # a config field: `trust_remote_code: bool = False`
        target = node.target.id if isinstance(node.target, ast.Name) else None
        if target == "trust_remote_code" and node.value is not None and not self._false_default(node.value):
            self.add("trust-remote-code", node, "the trust_remote_code field must default to False")
        self.generic_visit(node)

    def _false_default(self, value: ast.AST) -> bool:
        if _is_const(value, False):
            return True
        # pydantic / dataclasses: Field(False, ...) / field(default=False, ...)
        if isinstance(value, ast.Call) and (self.qualname(value.func) or "").split(".")[-1] in (
            "Field",
            "field",
        ):
            default = (
                value.args[0]
                if value.args
                else next((k.value for k in value.keywords if k.arg == "default"), None)
            )
            return _is_const(default, False)
        return False

    def _from_config(self, value: ast.AST) -> bool:
        """`cfg.trust_remote_code` (a config attribute) or a parameter of that name that defaults to False."""
        if isinstance(value, ast.Attribute) and value.attr == "trust_remote_code":
            return True
        if isinstance(value, ast.Name) and value.id == "trust_remote_code":
            return any("trust_remote_code" in scope for scope in self.params)
        return False

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            if (
                isinstance(key, ast.Constant)
                and key.value == "trust_remote_code"
                and not self._from_config(value)
            ):
                self.add(
                    "trust-remote-code", node, "a trust_remote_code value that does not come from the config"
                )
        self.generic_visit(node)

    # ------------------------------------------------------------------ names
    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if f"{node.module}.{alias.name}" in UNSAFE_YAML_NAMES | UNSAFE_YAML_CALLS:
                self.add(
                    "yaml",
                    node,
                    f"imports {node.module}.{alias.name}, which constructs arbitrary Python objects",
                )

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.qualname(node) in UNSAFE_YAML_NAMES:
            self.add("yaml", node, f"{self.qualname(node)} constructs arbitrary Python objects")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.aliases and self.aliases[node.id] in UNSAFE_YAML_NAMES:
            self.add("yaml", node, f"{self.aliases[node.id]} constructs arbitrary Python objects")

    # ------------------------------------------------------------------ calls
    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualname(node.func) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in ("torch.load", "torch.serialization.load") and not _is_const(
            keywords.get("weights_only"), True
        ):
            self.add("torch-load", node, f"{name}(...) without weights_only=True unpickles arbitrary objects")
        if name in ("torch.save", "torch.serialization.save", "pickle.dump", "pickle.dumps"):
            self.add("torch-save", node, f"{name}(...) writes a pickle; weights are written as safetensors")
        if name in PICKLE_LOADS:
            self.add("pickle", node, f"{name}(...) unpickles arbitrary objects")
        if name in UNSAFE_YAML_CALLS:
            self.add("yaml", node, f"{name}(...) constructs arbitrary Python objects; use yaml.safe_load")
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or self.qualname(loader) not in self.safe_loaders:
                self.add("yaml", node, f"{name}(...) without a SafeLoader (subclass); use yaml.safe_load")
        if name in SHELL_CALLS or name.startswith(("os.exec", "os.spawn", "commands.")):
            self.add("shell", node, f"{name}(...) runs a shell or replaces the process")
        if name.startswith("subprocess.") and "shell" in keywords and not _is_const(keywords["shell"], False):
            self.add("shell", node, f"{name}(..., shell=...) hands its command to a shell")
        if name in ("eval", "exec", "compile", "builtins.eval", "builtins.exec", "builtins.compile"):
            self.add("eval", node, f"{name}(...) runs text as code")
        if name in DYNAMIC_IMPORTS or name.startswith("pkg_resources."):
            self.add("dynamic-import", node, f"{name}(...) turns a string into code")
        if "trust_remote_code" in keywords and not self._from_config(keywords["trust_remote_code"]):
            self.add("trust-remote-code", node, f"{name}(trust_remote_code=...) not from the config")
        for key in ("safe_serialization", "save_safetensors"):
            if key in keywords and not _is_const(keywords[key], True):
                self.add("unsafe-save", node, f"{name}({key}=...) may write pickled weights")
        self.generic_visit(node)


def scan(source: str) -> list[Finding]:
    tree = ast.parse(source)
    scanner = _Scanner(tree)
    scanner.visit(tree)
    return scanner.findings


def library_files() -> list[Path]:
    return sorted(p for package in LIBRARY for p in (REPO / package).rglob("*.py"))


# ---------------------------------------------------------------- the library


def test_library_source_keeps_the_promises() -> None:
    files = library_files()
    assert len(files) > 10 and any(p.name == "schema.py" for p in files)
    problems = []
    for path in files:
        relative = path.relative_to(REPO).as_posix()
        for finding in scan(path.read_text(encoding="utf-8")):
            if (relative, finding.rule) not in ALLOWED:
                problems.append(f"{relative}:{finding.line}: [{finding.rule}] {finding.text}")
    assert problems == []


def test_the_yaml_loader_is_a_safe_loader(tmp_path: Path) -> None:
    import yaml

    from rlft.config.yaml_io import _YamlLoader, parse_overrides, read_yaml
    from rlft.errors import ConfigError

    assert issubclass(_YamlLoader, yaml.SafeLoader)
    # The safe loader in action: a Python-object tag is refused, not constructed, in a file and in an override.
    source = tmp_path / "exp.yaml"
    source.write_text("name: !!python/object/apply:os.getcwd []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        read_yaml(source)
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        parse_overrides(["name=!!python/object/apply:os.getcwd []"])


# ---------------------------------------------------------------- each rule can fire

BAD_SNIPPETS: list[tuple[str, str, str]] = [
    ("torch-load-no-flag", "torch-load", "import torch\ntorch.load('w.pt')\n"),
    ("torch-load-false", "torch-load", "import torch\ntorch.load('w.pt', weights_only=False)\n"),
    ("torch-load-alias", "torch-load", "from torch import load\nload('w.pt', map_location='cpu')\n"),
    ("torch-save", "torch-save", "import torch\ntorch.save(model.state_dict(), 'w.pt')\n"),
    ("pickle-load", "pickle", "import pickle\npickle.load(open('x', 'rb'))\n"),
    ("yaml-load-default", "yaml", "import yaml\nyaml.load(text)\n"),
    ("yaml-load-unsafe-loader", "yaml", "import yaml\nyaml.load(text, Loader=yaml.Loader)\n"),
    ("yaml-load-full-loader", "yaml", "import yaml\nyaml.load(text, yaml.FullLoader)\n"),
    ("yaml-unsafe-load", "yaml", "import yaml\nyaml.unsafe_load(text)\n"),
    (
        "yaml-loader-subclass",
        "yaml",
        "import yaml\nclass L(yaml.Loader):\n    pass\nyaml.load(text, Loader=L)\n",
    ),
    ("yaml-loader-import", "yaml", "from yaml import UnsafeLoader\n"),
    ("subprocess-shell", "shell", "import subprocess\nsubprocess.run(cmd, shell=True)\n"),
    ("subprocess-shell-variable", "shell", "import subprocess as sp\nsp.Popen(cmd, shell=use_shell)\n"),
    ("os-system", "shell", "import os\nos.system('wandb sync ' + path)\n"),
    ("os-popen", "shell", "import os\nos.popen(cmd)\n"),
    ("eval", "eval", "value = eval(config['expr'])\n"),
    ("exec", "eval", "exec(source)\n"),
    ("import-module", "dynamic-import", "import importlib\nimportlib.import_module(config.reward)\n"),
    ("dunder-import", "dynamic-import", "__import__(name)\n"),
    (
        "trust-remote-code-true",
        "trust-remote-code",
        "from transformers import AutoModel\nAutoModel.from_pretrained(p, trust_remote_code=True)\n",
    ),
    (
        "trust-remote-code-local-variable",
        "trust-remote-code",
        "def f(p):\n    remote = True\n    return AutoModel.from_pretrained(p, trust_remote_code=remote)\n",
    ),
    (
        "trust-remote-code-default-true",
        "trust-remote-code",
        "def load(p, trust_remote_code=True):\n    pass\n",
    ),
    ("trust-remote-code-field-true", "trust-remote-code", "class C:\n    trust_remote_code: bool = True\n"),
    (
        "trust-remote-code-field-call",
        "trust-remote-code",
        "class C:\n    trust_remote_code: bool = Field(True)\n",
    ),
    ("trust-remote-code-in-kwargs", "trust-remote-code", "kwargs = {'trust_remote_code': True}\n"),
    ("save-not-safetensors", "unsafe-save", "model.save_pretrained(p, safe_serialization=False)\n"),
    ("trainer-not-safetensors", "unsafe-save", "TrainingArguments(output_dir=d, save_safetensors=flag)\n"),
]

GOOD_SNIPPETS: list[tuple[str, str]] = [
    ("torch-load-weights-only", "import torch\ntorch.load(buffer, map_location='cpu', weights_only=True)\n"),
    ("yaml-safe-load", "import yaml\nyaml.safe_load(text)\nyaml.safe_dump(data)\n"),
    (
        "yaml-safe-subclass",
        "import yaml\nclass A(yaml.SafeLoader):\n    pass\nclass B(A):\n    pass\n"
        "yaml.load(text, Loader=B)\n",
    ),
    (
        "subprocess-list",
        "import subprocess\nsubprocess.run(['git', 'status'], check=True)\n"
        "subprocess.run(['ls'], shell=False)\n",
    ),
    ("model-eval", "model.eval()\nself.model.eval()\n"),
    ("save-safetensors", "model.save_pretrained(p)\nmodel.save_pretrained(p, safe_serialization=True)\n"),
    (
        "trust-remote-code-from-config",
        "def load(p, cfg, trust_remote_code=False):\n"
        "    AutoModel.from_pretrained(p, trust_remote_code=cfg.trust_remote_code)\n"
        "    AutoTokenizer.from_pretrained(p, trust_remote_code=trust_remote_code)\n"
        "class C:\n    trust_remote_code: bool = False\n    other: bool = Field(False)\n",
    ),
]


@pytest.mark.parametrize(("rule", "source"), [c[1:] for c in BAD_SNIPPETS], ids=[c[0] for c in BAD_SNIPPETS])
def test_scanner_flags_a_bad_snippet(rule: str, source: str) -> None:
    assert rule in {f.rule for f in scan(source)}


@pytest.mark.parametrize("source", [c[1] for c in GOOD_SNIPPETS], ids=[c[0] for c in GOOD_SNIPPETS])
def test_scanner_passes_a_good_snippet(source: str) -> None:
    assert scan(source) == []


# ---------------------------------------------------------------- trust_remote_code: False unless a config sets it


def test_trust_remote_code_defaults_to_false() -> None:
    import dataclasses

    import trl

    from rlft.algorithms.ppo import PPOConfig
    from rlft.config.schema import ModelConfig, load_config

    assert ModelConfig.model_fields["trust_remote_code"].default is False
    config = load_config(
        raw={"model": {"tiny": {}}, "env": {"id": "rlft/FrozenLake-v0"}}
    )  # keys and types only
    assert config.model.trust_remote_code is False
    for cls in (
        trl.SFTConfig,
        trl.GRPOConfig,
        PPOConfig,
    ):  # `*.trainer.trust_remote_code` (critic_init loads)
        assert {f.name: f.default for f in dataclasses.fields(cls)}["trust_remote_code"] is False


def test_trust_remote_code_and_revision_reach_transformers_only_from_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlft.config.schema import ModelConfig
    from rlft.models import policy

    calls: list[tuple[str, dict]] = []

    def recorder(what: str, result):
        def from_pretrained(name_or_path, **kwargs):
            calls.append((what, kwargs))
            return result

        return from_pretrained

    tokenizer = SimpleNamespace(pad_token="<pad>", eos_token="</s>", padding_side="right")
    monkeypatch.setattr(policy.AutoTokenizer, "from_pretrained", recorder("tokenizer", tokenizer))
    monkeypatch.setattr(policy.AutoModelForCausalLM, "from_pretrained", recorder("model", object()))

    policy.load_pretrained("org/model", ModelConfig(name_or_path="org/model"))
    assert [(what, kw["trust_remote_code"], kw["revision"]) for what, kw in calls] == [
        ("tokenizer", False, None),
        ("model", False, None),
    ]
    assert calls[1][1]["use_safetensors"] is True

    calls.clear()
    pinned = "0123456789abcdef0123456789abcdef01234567"
    policy.load_pretrained(
        "org/model", ModelConfig(name_or_path="org/model", trust_remote_code=True, revision=pinned)
    )
    assert [(what, kw["trust_remote_code"], kw["revision"]) for what, kw in calls] == [
        ("tokenizer", True, pinned),
        ("model", True, pinned),
    ]


# ---------------------------------------------------------------- weights are written as safetensors

PICKLED_WEIGHT_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack"}


def weight_file_problems(folder: Path) -> list[str]:
    """Why `folder` is not a safetensors-only checkpoint (empty list: it is)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    problems = [
        f"{p.relative_to(folder)} is a pickled weight file"
        for p in files
        if p.suffix in PICKLED_WEIGHT_SUFFIXES
    ]
    if not any(p.suffix == ".safetensors" for p in files):
        problems.append("no .safetensors file")
    return problems


def test_weight_file_check_can_fail(tmp_path: Path) -> None:
    assert weight_file_problems(tmp_path) == ["no .safetensors file"]
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert weight_file_problems(tmp_path) == ["pytorch_model.bin is a pickled weight file"]


def test_saved_policy_and_critic_are_safetensors_only(frozen_lake_policy, tmp_path: Path) -> None:
    from safetensors import safe_open

    from rlft.models.critic import ValueModel, backbone_of, load_critic, save_critic
    from rlft.models.policy import load_pretrained, save_policy

    config, model, tokenizer = frozen_lake_policy
    path = save_policy(model, tokenizer, tmp_path / "policy")
    assert weight_file_problems(path) == []
    with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
        saved = set(weights.keys())
    assert saved and saved <= set(model.state_dict())
    reloaded, _ = load_pretrained(
        str(path), config.model.model_copy(update={"name_or_path": str(path), "tiny": None})
    )
    assert type(reloaded) is type(model)

    critic = ValueModel(copy.deepcopy(backbone_of(model)))
    critic_path = save_critic(critic, tmp_path / "critic", "separate", "policy")
    assert weight_file_problems(critic_path) == []
    assert isinstance(load_critic(critic_path), ValueModel)


# ---------------------------------------------------------------- bandit, as the CI runs it

BANDIT = [sys.executable, "-m", "bandit", "-q", "-r", "--severity-level", "high"]


@pytest.fixture
def bandit_installed() -> None:
    pytest.importorskip("bandit", reason="bandit is a dev extra: pip install -e '.[dev]'")


def test_bandit_finds_nothing_of_high_severity(bandit_installed) -> None:
    result = subprocess.run([*BANDIT, *LIBRARY], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bandit_check_fails_on_a_high_severity_finding(bandit_installed, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "bad.py").write_text(
        "import subprocess\nsubprocess.call('wandb sync ' + path, shell=True)\n", encoding="utf-8"
    )
    result = subprocess.run([*BANDIT, str(package)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "B602" in result.stdout


def test_ci_runs_bandit_over_the_library() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    command = next((line for line in ci.splitlines() if "bandit" in line and not line.startswith("#")), "")
    assert "--severity-level high" in command and all(package in command.split() for package in LIBRARY)
    assert ci.index(command) < ci.index(".venv/bin/python -m pytest")
