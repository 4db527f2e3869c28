mod admin_keys;
mod bad_input;
mod bootstrap;
mod cli;
mod helpers;
mod ops;
mod secrets;
