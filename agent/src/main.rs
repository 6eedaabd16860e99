//! auth-agent: keeps a personal access token alive (issue 3; in progress).
fn main() {}
