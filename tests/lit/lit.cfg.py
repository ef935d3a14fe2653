# lit configuration: golden tests for the front end, the IR, the passes, codegen and the CLI.
# Substitutions: `esperc` (the CLI from this checkout's venv) and `FileCheck` (Python filecheck).
import os
import shutil

import lit.formats

config.name = "esperc"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".esp", ".eir", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.excludes = ["Inputs", "Output", "tools", "lit.cfg.py"]

root = os.path.dirname(os.path.dirname(config.test_source_root))
bindir = os.path.join(root, ".venv", "bin")
esperc = os.path.join(bindir, "esperc")
if not os.path.exists(esperc):
    esperc = shutil.which("esperc") or "esperc"
filecheck = os.path.join(bindir, "filecheck")
if not os.path.exists(filecheck):
    filecheck = shutil.which("filecheck") or "filecheck"

config.substitutions.append(("%esperc", esperc))
config.substitutions.append(("FileCheck", filecheck))
python = os.path.join(bindir, "python")
config.substitutions.append(
    ("%expect-exit", f"{python} {os.path.join(config.test_source_root, 'tools', 'expect_exit.py')}")
)
config.substitutions.append(("%python", python))
config.substitutions.append(("%samples", os.path.join(root, "samples")))

config.environment["NO_COLOR"] = "1"
config.environment["COLUMNS"] = "120"
config.environment["ESPERC_CACHE_DIR"] = os.path.join(root, ".venv", "lit-cache")
for var in ("HOME", "TMPDIR"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
# RUN lines call plain `esperc`: this checkout's venv comes first on PATH.
config.environment["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
