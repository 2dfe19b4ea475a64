"""Shell completion as a shell asks for it (Click's protocol, through Click's test
runner): node, pool and SKU names from the database and the catalogue."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from provisioner.cli import cli


def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash is offered for the last word of ``words`` (a trailing space: a new one)."""
    parts = words.split(" ")
    result = CliRunner().invoke(cli, prog_name="gpuctl", env={
        "_GPUCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1), **(env or {})})
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.output.splitlines()
            if line.startswith("plain,")]


def test_node_names_are_offered_wherever_a_command_takes_nodes(gpuctl) -> None:  # type: ignore[no-untyped-def]
    for name, address in (("gpu-node-01", "127.0.0.11"), ("gpu-node-02", "127.0.0.12"),
                          ("cpu-login-1", "127.0.0.13")):
        assert gpuctl("nodes", "add", name, "--address", address).code == 0
    for words in ("gpuctl burnin gpu-", "gpuctl provision gpu-", "gpuctl scan gpu-",
                  "gpuctl nodes show gpu-", "gpuctl drain gpu-", "gpuctl handoff slurm gpu-",
                  "gpuctl nodes remove gpu-node-01 gpu-"):
        assert complete(words) == ["gpu-node-01", "gpu-node-02"], words
    assert complete("gpuctl burnin ") == ["cpu-login-1", "gpu-node-01", "gpu-node-02"]
    assert complete("gpuctl burnin x") == []
    # LIKE's wildcards in what was typed are literal characters.
    assert complete("gpuctl burnin gpu_") == [] and complete("gpuctl burnin %") == []


def test_sku_and_pool_names_are_offered(gpuctl) -> None:  # type: ignore[no-untyped-def]
    assert complete("gpuctl skus show h1") == ["h100-pcie-8", "h100-sxm-8"]
    assert complete("gpuctl nodes add n1 --sku h2") == ["h200-sxm-8"]
    assert complete("gpuctl pool create team --sku b2") == ["b200-8"]
    made = gpuctl("pool", "create", "vision", "--sku", "h100-sxm-8", "--gpus", "8", "--open")
    assert made.code == 0
    made = gpuctl("pool", "create", "video", "--sku", "h100-sxm-8", "--gpus", "8", "--open")
    assert made.code == 0
    assert complete("gpuctl pool delete vi") == ["video", "vision"]
    assert complete("gpuctl pool assign vis") == ["vision"]


def test_a_site_sku_is_offered(gpuctl_home: Path) -> None:
    (gpuctl_home / "skus").mkdir()
    shipped = (Path(__file__).parents[2] / "inventory/skus/h100-sxm-8.yml").read_text()
    (gpuctl_home / "skus/h100-site.yml").write_text(
        shipped.replace("name: h100-sxm-8", "name: h100-site"))
    assert complete("gpuctl skus show h100-") == ["h100-pcie-8", "h100-site", "h100-sxm-8"]


def test_the_db_option_picks_the_database(gpuctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other.db"
    assert gpuctl("--db", str(other), "init").code == 0
    assert gpuctl("--db", str(other), "nodes", "add", "gpu-other", "--address",
                  "127.0.0.9").code == 0
    assert complete(f"gpuctl --db {other} burnin gpu") == ["gpu-other"]
    assert complete("gpuctl burnin gpu", env={"GPUCTL_DB": str(other)}) == ["gpu-other"]
    assert complete("gpuctl burnin gpu") == []


def test_no_database_completes_nothing_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    assert complete("gpuctl burnin ", env={"GPUCTL_HOME": str(home)}) == []
    assert not home.exists()
    # A server that is down: nothing offered, no traceback, within the connect timeout.
    down = "postgresql+psycopg://gpuctl@127.0.0.1:9/none"
    assert complete("gpuctl burnin ", env={"GPUCTL_DB": down}) == []
    assert complete("gpuctl burnin ", env={"GPUCTL_DB": down.replace(":9/", ":abc/")}) == []


def test_a_broken_site_sku_file_completes_nothing(gpuctl_home: Path) -> None:
    (gpuctl_home / "skus").mkdir()
    (gpuctl_home / "skus" / "bad.yml").write_bytes(b"\xff\xfe\x00")
    assert complete("gpuctl skus show b") == []


def test_the_shells_scripts_come_from_click(gpuctl) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    sources = {shell: runner.invoke(cli, prog_name="gpuctl",
                                    env={"_GPUCTL_COMPLETE": f"{shell}_source"}).output
               for shell in ("bash", "zsh", "fish")}
    assert "complete -o nosort -F _gpuctl_completion gpuctl" in sources["bash"]
    assert sources["zsh"].startswith("#compdef gpuctl")
    assert "complete --no-files --command gpuctl" in sources["fish"]
