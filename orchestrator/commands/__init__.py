"""``cato`` sub-commands that glue the pieces together (each: ``configure`` and ``run``)."""
