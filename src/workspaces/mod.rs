//! Workspaces, their members and the audit log (DESIGN §3, §6): the services behind
//! `/admin/v1/workspaces…`, `/admin/v1/audit-events`, the CLI's `workspaces`, `members` and
//! `audit` commands, and the console. Like `keys::KeysService`, they know nothing of HTTP
//! and decide every permission through `keys::Caller`; each change writes its audit event
//! in the same store transaction.

pub mod input;
mod members;
mod service;
pub mod webhook;

pub use self::{
    input::{MemberPatch, NewMember, NewWorkspace, WorkspacePatch},
    members::{MembersService, SignedIn},
    service::{AuditQuery, WorkspaceChange, WorkspaceDetails, WorkspacesService},
};
