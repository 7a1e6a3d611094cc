"""The stages of the Self-Challenging Agent pipeline, one module each.

Each stage is a library function first (``stages.validate.validate_file``),
wrapped by a thin command in ``sca_cli``. Follow one task through them in
order: propose -> validate -> rollout -> train -> eval.
"""
