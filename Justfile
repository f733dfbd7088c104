# Conveniences only: every recipe is a plain command you can run without `just`.

build:
    cargo build --release

test:
    cargo test

up:
    cargo run --release -- up

lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

ci:
    bash .ci/run

bench:
    cargo bench
