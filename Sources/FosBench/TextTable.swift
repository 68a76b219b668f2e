/// Prints rows as aligned columns: the first `leftColumns` left-aligned
/// (names), the rest right-aligned (numbers).
func printTable(_ rows: [[String]], leftColumns: Int = 1) {
    guard let first = rows.first else { return }
    var w = [Int](repeating: 0, count: first.count)
    for r in rows { for (i, c) in r.enumerated() where i < w.count { w[i] = max(w[i], c.count) } }
    for r in rows {
        print(r.enumerated().map { i, c in
            i < leftColumns ? c.padding(toLength: w[i], withPad: " ", startingAt: 0)
                            : String(repeating: " ", count: max(0, w[i] - c.count)) + c
        }.joined(separator: "  "))
    }
}
