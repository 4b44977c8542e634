# container-desktop-relay: `make mutation` (included by the Makefile; needs its venv target).
# Mutation testing with mutmut (version pinned in pyproject.toml's "mutation" extra) of the
# modules listed under [tool.mutmut] there, checked by tests/unit only; docs/testing.md has
# the scores and the survivors. A full run takes about half an hour on two busy cores.
#   make mutation         run (resumes: mutants already decided are not re-run), then report
#   MUTATION_JOBS=N       parallel mutants (default: the CPU count)
MUTATION_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
MUTATION_REPORT ?= mutation-report.md

.PHONY: mutation mutation-clean

$(VENV)/.mutation: pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[test,mutation]'
	touch $@

mutation: $(VENV)/.mutation
	$(BIN)/mutmut run --max-children $(MUTATION_JOBS) > /dev/null
	$(BIN)/mutmut results --all true | $(BIN)/python scripts/mutation_report.py | tee $(MUTATION_REPORT)

mutation-clean:
	rm -rf mutants $(MUTATION_REPORT)
