"""Model families. Each is one module here plus YAML files under conf/model and conf/sampler."""
