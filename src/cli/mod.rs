//! Client subcommands: apply, get, weights, resolve.
