"""masklab configuration: YAML loading, registries and building objects from config nodes."""
