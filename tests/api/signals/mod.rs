//! What receivers of CI events ask for beyond every status: only the changes of a branch
//! (transition conditions), and a sequence per endpoint that lets them notice a missed delivery
//! and fetch it.
//!
//! The tests are declared here, so that their names stay `signals::…`.

mod conditions;

use conditions::{
    concurrent_finishes_on_a_branch_compare_with_each_other,
    conditions_send_only_the_changes_of_each_branch,
};

crate::on_both_backends!(
    conditions_send_only_the_changes_of_each_branch,
    concurrent_finishes_on_a_branch_compare_with_each_other,
);
