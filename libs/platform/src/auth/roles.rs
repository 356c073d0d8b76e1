//! What each caller may do: a role per credential, a permission per RPC.
//! A call outside its caller's role does nothing and answers
//! PERMISSION_DENIED naming the roles that may make it.

/// What a named credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, the audit log included.
    Admin,
    /// Agents, workflows and tasks: create, change, start, stop, trigger,
    /// cancel; and read.
    Operator,
    /// Decide approvals; and read.
    Approver,
    /// Read.
    Viewer,
    /// What the scheduler needs of the agent-manager: read, and dispatch
    /// and cancel tasks.
    Service,
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    /// Change agents, workflows or tasks.
    Operate,
    /// Decide an approval.
    Approve,
    /// Hand a task to an agent or take it back (the scheduler's calls).
    Dispatch,
    /// Read the audit log, prune the event log.
    Administer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Approver,
        Role::Viewer,
        Role::Service,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Approver => "approver",
            Self::Viewer => "viewer",
            Self::Service => "service",
        }
    }

    /// The role table (README "Security", "Roles").
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Self::Admin => true,
            Self::Operator => matches!(permission, Read | Operate | Dispatch),
            Self::Approver => matches!(permission, Read | Approve),
            Self::Viewer => matches!(permission, Read),
            Self::Service => matches!(permission, Read | Dispatch),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Permission {
    /// The roles that grant it, for the refusal's message.
    pub fn roles(self) -> String {
        Role::ALL
            .into_iter()
            .filter(|role| role.allows(self))
            .map(Role::as_str)
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_table() {
        use Permission::*;
        let table = [
            (Role::Admin, [true, true, true, true, true]),
            (Role::Operator, [true, true, false, true, false]),
            (Role::Approver, [true, false, true, false, false]),
            (Role::Viewer, [true, false, false, false, false]),
            (Role::Service, [true, false, false, true, false]),
        ];
        for (role, allowed) in table {
            for (permission, expected) in [Read, Operate, Approve, Dispatch, Administer]
                .into_iter()
                .zip(allowed)
            {
                assert_eq!(role.allows(permission), expected, "{role} {permission:?}");
            }
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Approve.roles(), "admin or approver");
        assert_eq!(Administer.roles(), "admin");
        assert_eq!(Role::parse("root"), None);
    }
}
