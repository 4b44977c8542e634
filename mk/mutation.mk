# container-desktop-relay: `make mutation` (included by the Makefile; needs its venv target).
# Mutation testing with mutmut (pinned in pyproject.toml's "mutation" extra and lock/mutation.txt) of the
# modules listed under [tool.mutmut] there, checked by tests/unit only; docs/testing.md has
# the scores and the survivors. A full run takes about half an hour on two busy cores.
#   make mutation         run (resumes: mutants already decided are not re-run), then report
#   MUTATION_JOBS=N       parallel mutants (default: the CPU count)
MUTATION_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
MUTATION_REPORT ?= mutation-report.md

.PHONY: mutation mutation-clean

# Its own env, exactly lock/mutation.txt (the dev lock plus mutmut), so .venv stays its lock.
MUT := .cache/mutation-venv

$(MUT)/.installed: lock/mutation.txt pyproject.toml
	$(call locked_venv,$(MUT),lock/mutation.txt)

mutation: $(MUT)/.installed
	$(MUT)/bin/mutmut run --max-children $(MUTATION_JOBS) > /dev/null
	$(MUT)/bin/mutmut results --all true | $(MUT)/bin/python scripts/mutation_report.py | tee $(MUTATION_REPORT)

mutation-clean:
	rm -rf mutants $(MUTATION_REPORT)
