"""The commands' work as library calls: batching over the runtime, plain result records out."""
