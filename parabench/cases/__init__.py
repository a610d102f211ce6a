"""Cases: what a benchmark case is, the matrices bench/ asks for, the registries and profiles."""
