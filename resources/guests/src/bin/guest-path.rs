//! Prints the image path of the guest named on the command line, e.g.
//! `vfiovm --kernel "$(cargo run -q -p vfiovm-guests --bin guest-path hello)"`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names = vfiovm_guests::NAMES.join(", ");
    match args.as_slice() {
        [name] => match vfiovm_guests::path(name) {
            Some(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("guest-path: no guest named `{name}`; the guests are: {names}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: guest-path <name>\nthe guests are: {names}");
            ExitCode::from(2)
        }
    }
}
