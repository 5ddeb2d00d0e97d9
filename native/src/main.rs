mod model;
mod router;
fn main() {
    std::process::exit(model::run());
}
