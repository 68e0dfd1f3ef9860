"""Native code generation: LLVM IR built with llvmlite, compiled for the host CPU, cached on disk."""
