"""What the plugin system promises a user on the command line: name clashes set a provider aside
with one warning line (fatal with --strict-plugins), blocking names that match nothing warn, and a
built-in package that does not import says why. Real drop-in files and subprocess CLI runs."""

from __future__ import annotations

import json

from conftest import clean_env, scaled_plugin


def clashing_dropins(directory):
    """alpha.py and beta.py, both shipping variant `twin` (each with its own builder)."""
    directory.mkdir()
    (directory / "alpha.py").write_text(scaled_plugin("twin", {"scale": 0.25}))
    beta = scaled_plugin("twin", {"scale": 0.75}).replace('"scaled-residual"', '"scaled-beta"')
    (directory / "beta.py").write_text(beta)
    return directory


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


def test_clashing_variant_sets_the_later_dropin_aside(run_cli, tmp_path):
    plugs = clashing_dropins(tmp_path / "plugs")
    result = run_cli("list", "--plugins-dir", str(plugs))
    assert result.returncode == 0, result.stderr
    (warning,) = warnings_of(result.stderr)
    assert warning == (f"warning: plugin 'beta' (dropin) failed: duplicate variant name 'twin': provided by alpha "
                       f"({plugs / 'alpha.py'}) and by beta ({plugs / 'beta.py'}); the first loaded keeps it, this "
                       f"plugin is set aside (rename one, or set replace = true on the one that should win)")
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("twin ")]
    assert "scale=0.25" in row and "alpha" in row
    infos = {i["name"]: i for i in json.loads(run_cli("plugins", "--json", "--plugins-dir", str(plugs)).stdout)}
    assert (infos["alpha"]["status"], infos["beta"]["status"]) == ("ok", "failed")
    assert infos["beta"]["contributes"] == {}  # its builder scaled-beta went with it
    assert "scaled-beta" not in run_cli("list", "--builders", "--plugins-dir", str(plugs)).stdout


def test_clash_is_fatal_with_strict_plugins(run_cli, tmp_path):
    plugs = clashing_dropins(tmp_path / "plugs")
    result = run_cli("list", "--plugins-dir", str(plugs), "--strict-plugins")
    assert result.returncode == 2
    assert result.stderr.startswith("skipbench: error: plugin 'beta' (dropin) failed: duplicate variant name 'twin'")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_variants_file_entry_clashing_with_a_plugin_is_set_aside(run_cli, tmp_path, dropin_dir):
    """The drop-in (loaded first) keeps `scaled-quarter`; the file's entry is skipped, its
    other entries load."""
    mine = tmp_path / "mine.toml"
    mine.write_text('[variants.scaled-quarter]\nbuilder = "plain"\n\n[variants.plain-tanh]\nbuilder = "plain"\n'
                    'params = { activation = "tanh" }\n')
    result = run_cli("list", "--plugins-dir", str(dropin_dir), "--variants", str(mine))
    assert result.returncode == 0, result.stderr
    (warning,) = warnings_of(result.stderr)
    assert warning.startswith(f"warning: {mine}: variant 'scaled-quarter': duplicate variant name 'scaled-quarter': "
                              f"provided by scaledplug ({dropin_dir / 'scaledplug.py'}) and by {mine}; the first "
                              f"loaded keeps it, this entry is set aside")
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert rows["scaled-quarter"].split()[1] == "scaled-residual" and "plain-tanh" in rows
    strict = run_cli("list", "--plugins-dir", str(dropin_dir), "--variants", str(mine), "--strict-plugins")
    assert strict.returncode == 2 and len(strict.stderr.splitlines()) == 1


def test_replace_true_in_a_variants_file_takes_the_name_silently(run_cli, tmp_path, dropin_dir):
    mine = tmp_path / "mine.toml"
    mine.write_text('[variants.scaled-quarter]\nbuilder = "plain"\nreplace = true\n')
    result = run_cli("list", "--plugins-dir", str(dropin_dir), "--variants", str(mine))
    assert result.returncode == 0 and not warnings_of(result.stderr)
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("scaled-quarter ")]
    assert row.split()[1] == "plain"


def test_disabling_an_unknown_plugin_warns_with_the_known_names(run_cli, dropin_dir):
    ok = run_cli("list", "--plugins-dir", str(dropin_dir), "--disable-plugin", "scaledplug")
    assert ok.returncode == 0 and not warnings_of(ok.stderr)
    for result in (run_cli("list", "--plugins-dir", str(dropin_dir), "--disable-plugin", "scaldplug"),
                   run_cli("plugins", "--plugins-dir", str(dropin_dir),
                           env=clean_env(SKIPBENCH_DISABLE_PLUGINS="scaldplug"))):
        assert result.returncode == 0, result.stderr
        (warning,) = warnings_of(result.stderr)
        assert warning.startswith("warning: --disable-plugin/SKIPBENCH_DISABLE_PLUGINS 'scaldplug' matches no "
                                  "plugin; known plugins: ")
        known = warning.split("known plugins: ")[1].split(", ")
        assert {"scaledplug", "plain", "residual", "highway", "dense"} <= set(known)


def test_builtin_package_that_does_not_import_is_reported(run_cli, tmp_path):
    """A broken built-in package (here: shadowed by one that raises) is a failed plugin with the
    import error, not an empty registry without a reason."""
    shadow = tmp_path / "shadow" / "skipbench_plugins"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("cannot import name \'helper\' from \'_common\'")\n')
    result = run_cli("plugins", "--json", env=clean_env(PYTHONPATH=str(shadow.parent)))
    assert result.returncode == 0, result.stderr
    (info,) = [i for i in json.loads(result.stdout) if i["name"] == "skipbench_plugins"]
    assert info["status"] == "failed" and info["source"] == "builtin"
    assert info["error"] == ("the built-in plugin package does not import: ImportError: cannot import name 'helper' "
                             "from '_common'")
    listing = run_cli("list", env=clean_env(PYTHONPATH=str(shadow.parent)))
    assert "warning: plugin 'skipbench_plugins' (builtin) failed: the built-in plugin package does not import" \
        in listing.stderr
