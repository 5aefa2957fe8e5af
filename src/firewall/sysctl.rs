//! Reading and writing the kernel settings lowport switches on for its
//! rules. What they were before lowport changed them is kept by
//! [`super::ledger`].

use std::io;

use super::plan::Sysctl;

/// Read a sysctl's current value (0 or 1 for the ones lowport uses).
pub fn read(s: Sysctl) -> io::Result<u8> {
    let text = std::fs::read_to_string(s.path())?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{s} = {text:?}")))
}

/// Write a sysctl.
pub fn write(s: Sysctl, value: u8) -> io::Result<()> {
    std::fs::write(s.path(), format!("{value}\n"))
}
