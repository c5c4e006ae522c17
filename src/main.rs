fn main() -> std::process::ExitCode {
    probewatch::cli::main()
}
