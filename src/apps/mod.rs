//! What tuwen is used for, on top of the library: the Teddy Cup tasks and evaluation ([`teddy`]) and the
//! static search site ([`site`]). Neither imports the other; both stand on [`crate::gallery`].

pub mod site;
pub mod teddy;
