//! End-to-end tests: a real relay process and real `muster` devices on loopback.

mod admin;
mod archive;
mod attachments;
mod conversation;
mod crisis;
mod delegation;
mod delivery;
mod enrolment;
mod faults;
mod flood;
mod groups;
mod hostile;
mod hostile_enrolment;
mod hostile_relay;
mod hostile_revocation;
mod network;
mod provision;
mod push;
mod receipts;
mod rogue;
mod rogue_member;
mod root_recovery;
mod several_relays;
mod store_encryption;
mod ui;
mod walkthrough;
