extension Array where Element: Comparable {
    /// The element that would be at index `k` if the array were sorted
    /// (Hoare's selection, in place: the array is left partly reordered).
    /// Linear on average, where a sort is n log n and, for the buffer
    /// cache's eviction, several times slower.
    mutating func selectSmallest(_ k: Int) -> Element {
        precondition(k >= 0 && k < count, "selectSmallest: index \(k) out of 0..<\(count)")
        var lo = 0, hi = count - 1
        while lo < hi {
            let pivot = self[lo + (hi - lo) / 2]
            var i = lo, j = hi
            // Both scans stop at elements equal to the pivot, so the first
            // swap always happens and each pass narrows [lo, hi].
            while i <= j {
                while self[i] < pivot { i += 1 }
                while self[j] > pivot { j -= 1 }
                if i <= j {
                    swapAt(i, j)
                    i += 1
                    j -= 1
                }
            }
            // Now [lo, j] <= pivot <= [i, hi], and anything between is the pivot.
            if k <= j {
                hi = j
            } else if k >= i {
                lo = i
            } else {
                return self[k]
            }
        }
        return self[k]
    }
}
