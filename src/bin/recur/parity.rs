//! `recur parity FILE...`: runs PyTorch parity fixtures through recur's layers.

use std::path::PathBuf;
use std::process::ExitCode;

use recur::nn::parity::check_fixture_file;

use crate::CmdResult;

/// Checks each fixture and prints one line per file: the largest relative error of the outputs
/// and of the gradients (with the tensor it was found in), the tolerance, and `ok` or `FAIL`.
///
/// Exit status: 0 when every file passes; 1 when some file exceeds its tolerance (1e-9 for F64,
/// 1e-4 for F32); 2 when some file is not a valid fixture (reported on stderr), which takes
/// precedence. Every file is checked either way.
pub fn run(files: &[PathBuf]) -> CmdResult {
    let (mut failed, mut invalid) = (0usize, 0usize);
    for path in files {
        match check_fixture_file(path) {
            Ok(report) => {
                let (oe, on) = report.output_error();
                let (ge, gn) = report.gradient_error();
                let ok = report.passed();
                println!(
                    "{}: outputs {oe:.3e} ({on}), gradients {ge:.3e} ({gn}), tolerance {:e}: {}",
                    path.display(),
                    report.tolerance(),
                    if ok { "ok" } else { "FAIL" }
                );
                if !ok {
                    failed += 1;
                }
            }
            Err(e) => {
                eprintln!("recur parity: not a valid parity fixture: {e}");
                invalid += 1;
            }
        }
    }
    if files.len() > 1 {
        println!(
            "{} files: {} ok, {failed} failed, {invalid} invalid",
            files.len(),
            files.len() - failed - invalid
        );
    }
    Ok(if invalid > 0 {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
